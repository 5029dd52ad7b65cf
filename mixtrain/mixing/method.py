"""A mixing method is one registry entry: its config dataclass, the mixer that draws and applies its
plans, whether ``mixtrain preview`` can draw it, the loss it needs, and its label in reports.

A method's module defines its config and mixer and calls :func:`register_method` at import; its
YAML option (``conf/augment/<name>.yaml``, or one in a user's config dir) starts from
``/schema/augment/<name>``. Nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from mixtrain.config.errors import require
from mixtrain.config.registry import Entry, entry_of, register
from mixtrain.errors import MixtrainError


@dataclass(frozen=True)
class MixingMethod(Entry):
    mixer: Optional[type] = None  # a Mixer subclass: (cfg, num_classes, epochs, seed, rank) -> mixer
    previewable: bool = True  # False: it mixes something that has no picture (hidden features)
    loss: Optional[str] = None  # the augment.loss it needs; None: either
    label: Optional[Callable[[Any], str]] = None  # its short name in reports: "mixup a=0.2"
    checks: Optional[Callable[[Any, Any], None]] = None  # (its config, the run config): what needs the whole run

    def check_run(self, config: Any, run: Any) -> None:
        if self.loss is not None:
            require(config.loss == self.loss, "augment.loss", f"must be {self.loss} with augment={self.name}",
                    config.loss)
        if self.checks is not None:
            self.checks(config, run)

    def describe(self, config: Any) -> str:
        return self.label(config) if self.label else labelled_by_alpha(config)


def labelled_by_alpha(config: Any) -> str:
    """``name a=ALPHA`` for a method with an ``alpha``, else its name."""
    alpha = getattr(config, "alpha", None)
    return f"{config.name} a={alpha:g}" if isinstance(alpha, (int, float)) else config.name


def register_method(name: str, schema: type, mixer: type, previewable: bool = True, loss: Optional[str] = None,
                    label: Optional[Callable[[Any], str]] = None,
                    checks: Optional[Callable[[Any, Any], None]] = None) -> MixingMethod:
    """Register a mixing method: ``augment=<name>`` then trains, previews and reports it."""
    return register(MixingMethod("augment", name, schema, mixer=mixer, previewable=previewable, loss=loss,
                                 label=label, checks=checks))


def method_of(config: Any) -> MixingMethod:
    """The registered method of an augment config."""
    method = entry_of("augment", config)
    if method is None:
        raise MixtrainError(f"augment {getattr(config, 'name', config)!r} is not a registered mixing method: its "
                            "module must call mixtrain.mixing.register_method (see mixtrain/mixing/method.py)")
    return method


def create_mixer(config: Any, num_classes: int, epochs: int, seed: int = 0, rank: int = 0):
    return method_of(config).mixer(config, num_classes, epochs, seed, rank)


def describe_augment(config: Any) -> str:
    """The augment's label with what else changes its targets: ``mixup a=0.2 elem ls=0.1``."""
    text = method_of(config).describe(config)
    if config.name != "none" and getattr(config, "mode", "batch") != "batch":
        text += f" {config.mode}"
    if config.label_smoothing:
        text += f" ls={config.label_smoothing:g}"
    if config.loss == "bce":
        text += " BCE"
    return text
