"""A model family is one registry entry: its config dataclass, how it builds a model for a number of
classes, and how many stages the model has (for Manifold Mixup's layer choice; None: known only
once built)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

from mixtrain.config.registry import Entry, entry_of, register
from mixtrain.errors import MixtrainError


@dataclass(frozen=True)
class ModelFamily(Entry):
    build: Optional[Callable[[Any, int], nn.Module]] = None  # (its config, num_classes) -> model
    count_stages: Optional[Callable[[Any], Optional[int]]] = None
    pretrained_cfg: Optional[Callable[[Any], Optional[Dict[str, Any]]]] = None  # its config -> timm's pretrained_cfg

    def stages(self, config: Any) -> Optional[int]:
        return self.count_stages(config) if self.count_stages else None

    def preprocessing(self, config: Any) -> Optional[Dict[str, Any]]:
        return self.pretrained_cfg(config) if self.pretrained_cfg else None


def register_family(name: str, schema: type, build: Callable[[Any, int], nn.Module],
                    names: Optional[Tuple[str, ...]] = None,
                    stages: Optional[Callable[[Any], Optional[int]]] = None,
                    pretrained_cfg: Optional[Callable[[Any], Optional[Dict[str, Any]]]] = None) -> ModelFamily:
    return register(ModelFamily("model", name, schema, names=names, build=build, count_stages=stages,
                                pretrained_cfg=pretrained_cfg))


def create_model(config: Any, num_classes: int) -> nn.Module:
    family = entry_of("model", config)
    if family is None:
        raise MixtrainError(f"model {getattr(config, 'name', config)!r} has no registered family "
                            "(mixtrain/models/family.py)")
    return family.build(config, num_classes)
