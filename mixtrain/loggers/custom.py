"""A logger of your own, named by ``_target_``: ``logger=[tensorboard,custom]
logger.custom._target_=my_pkg.trackers.MyLogger [+logger.custom.kwargs.every=2]``.

The class is called as ``MyLogger(**kwargs)`` and keeps the contract of
:mod:`mixtrain.loggers.base` (any of ``start``, ``log_step``, ``log_epoch``, ``log_image``,
``finish``, ``state_dict``, ``where``). A YAML option of your own (``-cd my_configs
logger=[tensorboard,mine]``, ``my_configs/logger/mine.yaml``) holds one node under its name with
``_target_`` and ``kwargs``, or starts from ``/schema/logger/custom@mine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from omegaconf import MISSING

from mixtrain.config.store import import_target
from mixtrain.errors import MixtrainError
from mixtrain.loggers.base import register_logger


@dataclass
class CustomLoggerConfig:
    """Your own logger: its class by `_target_`, built as cls(**kwargs)."""

    name: str = "custom"  # how logs name it
    _target_: str = MISSING  # the class, as a dotted path: my_pkg.trackers.MyLogger
    kwargs: Dict[str, Any] = field(default_factory=dict)  # arguments for the class named by _target_


def build_custom(cfg: CustomLoggerConfig, key: str) -> Any:
    cls = import_target(f"logger.{key}._target_", cfg._target_, "my_pkg.trackers.MyLogger")
    try:
        return cls(**cfg.kwargs)
    except Exception as ex:  # your class refused its arguments: say so in one line, before the run starts
        raise MixtrainError(f"{cfg._target_}(**logger.{key}.kwargs) failed ({type(ex).__name__}: {ex}): fix "
                            f"logger.{key}.kwargs or the class") from None


register_logger("custom", CustomLoggerConfig, build_custom)
