"""A user's own ``nn.Module``, named by ``_target_``: ``model=custom model._target_=my_pkg.MyNet``.

The class is called as ``MyNet(num_classes=N, **kwargs)``. A YAML option of the user's own
(``-cd my_configs model=my_net``) starts from ``/schema/model/custom`` and sets ``name``,
``_target_`` and ``kwargs``. Manifold Mixup finds its stages by a ``stages`` attribute or timm's
``feature_info``, as for the other models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from omegaconf import MISSING
from torch import nn

from mixtrain.config.model import ModelConfig
from mixtrain.config.store import import_target
from mixtrain.errors import MixtrainError
from mixtrain.models.family import register_family


@dataclass
class CustomModelConfig(ModelConfig):
    """Your own nn.Module: its class by `_target_`, built as cls(num_classes=N, **kwargs)."""

    name: str = "custom"  # how reports and logs name it
    _target_: str = MISSING  # the class, as a dotted path: my_pkg.nets.MyNet
    kwargs: Dict[str, Any] = field(default_factory=dict)  # arguments for the class named by _target_


def build_custom(cfg: CustomModelConfig, num_classes: int) -> nn.Module:
    cls = import_target("model._target_", cfg._target_, "my_pkg.nets.MyNet")
    try:
        model = cls(num_classes=num_classes, **cfg.kwargs)
    except TypeError as ex:
        raise MixtrainError(f"{cfg._target_}(num_classes={num_classes}, **model.kwargs) failed: {ex}") from None
    if not isinstance(model, nn.Module):
        raise MixtrainError(f"model._target_={cfg._target_!r} built a {type(model).__name__}, not a torch nn.Module")
    return model


# The `custom` schema with its own config name: a saved config is told by its `_target_`.
register_family("custom", CustomModelConfig, build_custom, names=())
