"""A model family is one registry entry: its config dataclass, how it builds a model for a number of
classes, and how many stages the model has (for Manifold Mixup's layer choice; None: known only
once built); :func:`create_model` adds what every model has (first weights from a file, gradient
checkpointing)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from mixtrain.config.registry import Entry, entry_of, register
from mixtrain.errors import MixtrainError
from mixtrain.models.weights import load_into


@dataclass(frozen=True)
class ModelFamily(Entry):
    build: Optional[Callable[[Any, int], nn.Module]] = None  # (its config, num_classes) -> model
    count_stages: Optional[Callable[[Any], Optional[int]]] = None
    pretrained_cfg: Optional[Callable[[Any], Optional[Dict[str, Any]]]] = None  # its config -> timm's pretrained_cfg
    # (its config, num_classes) -> (model, summary line) with model.pretrained_path loaded by the family's own
    # library (timm's); None: loaded into the built model by mixtrain (models/weights.py), by the same rule.
    load_file: Optional[Callable[[Any, int], Tuple[nn.Module, str]]] = None
    advise: Optional[Callable[[Any, Any], Optional[str]]] = None  # (its config, the run) -> a warning, or None

    def advice(self, config: Any, run: Any) -> Optional[str]:
        return self.advise(config, run) if self.advise else None

    def stages(self, config: Any) -> Optional[int]:
        return self.count_stages(config) if self.count_stages else None

    def preprocessing(self, config: Any) -> Optional[Dict[str, Any]]:
        return self.pretrained_cfg(config) if self.pretrained_cfg else None


def register_family(name: str, schema: type, build: Callable[[Any, int], nn.Module],
                    names: Optional[Tuple[str, ...]] = None,
                    stages: Optional[Callable[[Any], Optional[int]]] = None,
                    pretrained_cfg: Optional[Callable[[Any], Optional[Dict[str, Any]]]] = None,
                    load_file: Optional[Callable[[Any, int], Tuple[nn.Module, str]]] = None,
                    advise: Optional[Callable[[Any, Any], Optional[str]]] = None) -> ModelFamily:
    return register(ModelFamily("model", name, schema, names=names, build=build, count_stages=stages,
                                pretrained_cfg=pretrained_cfg, load_file=load_file, advise=advise))


def run_image_size(run: Any) -> int:
    """The side a run's model trains at: a streamed or cached dataset's size, else 32 (CIFAR, the bundled set)."""
    size = getattr(run.dataset, "size", None)
    return (size(True) if size else None) or 32


def without_weights(config: Any) -> Any:
    """The config of the same model with no first weights (a checkpoint holds them: resume, eval, export)."""
    changes = {k: v for k, v in (("pretrained", False), ("pretrained_path", None)) if hasattr(config, k)}
    return dataclasses.replace(config, **changes) if changes else config


def create_model(config: Any, num_classes: int, load_weights: bool = True, notes: Optional[List[str]] = None) -> nn.Module:
    """The model of ``config`` for ``num_classes``: its first weights (``model.pretrained``,
    ``model.pretrained_path``) unless ``load_weights=False``, gradient checkpointing on if asked.
    ``notes`` receives the line that says what a weights file gave."""
    family = entry_of("model", config)
    if family is None:
        raise MixtrainError(f"model {getattr(config, 'name', config)!r} has no registered family "
                            "(mixtrain/models/family.py)")
    if not load_weights:
        config = without_weights(config)
    path = getattr(config, "pretrained_path", None)
    if path and family.load_file is not None:
        model, note = family.load_file(config, num_classes)
    else:
        model = family.build(config, num_classes)
        note = load_into(model, path, config.name, config.strict) if path else ""
    if note and notes is not None:
        notes.append(note)
    if getattr(config, "grad_checkpointing", False):
        if not hasattr(model, "set_grad_checkpointing"):
            raise MixtrainError(f"model.grad_checkpointing=true needs a set_grad_checkpointing method (timm's "
                                f"models and the bundled ones have it), and {type(model).__name__} has none: drop it")
        model.set_grad_checkpointing(True)
    return model
