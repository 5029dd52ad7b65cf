"""The base of every model schema: the keys every model has, those of fine-tuning. Each family's own
schema lives in its module under ``mixtrain/models/`` (its registry entry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from mixtrain.config.errors import at_least, choice, require

FREEZE = ("backbone",)  # what model.freeze can hold still: everything but the classifier


@dataclass
class ModelConfig:
    """Keys of every model: where its first weights come from, what trains, what is recomputed."""

    name: str = MISSING
    # A weights file to start from (.safetensors, .pth, .pt, .bin: timm's --pretrained-path); its
    # classifier is replaced when the class count differs. Read as data, never as a pickle.
    pretrained_path: Optional[str] = None
    # A pretrained_path whose tensors differ from the model beyond its classifier is an error;
    # false: load what fits and name the rest in one line.
    strict: bool = True
    freeze: Optional[str] = None  # backbone: train the classifier alone (BatchNorm statistics held too)
    freeze_epochs: Optional[int] = None  # with model.freeze: unfreeze after this many epochs; null: the whole run
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time

    def __post_init__(self) -> None:
        if self.freeze is not None:
            choice(self.freeze, FREEZE, "model.freeze")
        if self.freeze_epochs is not None:
            require(self.freeze is not None, "model.freeze_epochs", "needs model.freeze=backbone", self.freeze_epochs)
            at_least(self.freeze_epochs, 1, "model.freeze_epochs")
