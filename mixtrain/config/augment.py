"""The bases of every augment schema: what all of them have, and what every mixing method has.

Each method's own schema lives in its module under ``mixtrain/mixing/`` (its registry entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mixtrain.config.errors import at_least, choice, probability, require


@dataclass
class AugmentConfig:
    """No mixing (ERM): the base of every augment option, whose keys all of them have.

    Batch-level augmentation, applied on the device after the batch is formed."""

    name: str = "none"
    label_smoothing: float = 0.0  # applied to one-hot targets before any mixing
    disable_epochs: int = 0  # the last N epochs train without mixing
    loss: str = "soft_ce"  # soft_ce | bce
    bce_target_threshold: Optional[float] = None  # bce only: binarize targets above this

    def __post_init__(self) -> None:
        require(0.0 <= self.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)", self.label_smoothing)
        at_least(self.disable_epochs, 0, "augment.disable_epochs")
        choice(self.loss, ("soft_ce", "bce"), "augment.loss")
        if self.bce_target_threshold is not None:
            require(self.loss == "bce", "augment.bce_target_threshold", "needs augment.loss=bce", self.bce_target_threshold)
            probability(self.bce_target_threshold, "augment.bce_target_threshold")


MIX_MODES = ("batch", "pair", "elem")


@dataclass
class MixConfig(AugmentConfig):
    """Keys shared by every mixing augment."""

    # batch: one lambda per batch | pair: per pair of samples (k partners: a group of k + 1) | elem: per sample
    mode: str = "batch"
    prob: float = 1.0  # probability that a batch (batch mode) or a pair/sample is mixed at all
    symmetric_lam: bool = False  # lam = max(lam, 1 - lam): each sample dominates its own mix (fastai)

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.mode, MIX_MODES, "augment.mode")
        probability(self.prob, "augment.prob")
