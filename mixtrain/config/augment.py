"""Augment schemas: what mixes, how strongly, and per batch, pair or sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from mixtrain.config.errors import at_least, choice, probability, require


@dataclass
class AugmentConfig:
    """Batch-level augmentation applied on the device after the batch is formed."""

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

    mode: str = "batch"  # batch: one lambda per batch | pair: per pair of samples | elem: per sample
    prob: float = 1.0  # probability that a batch (batch mode) or a pair/sample is mixed at all
    symmetric_lam: bool = False  # lam = max(lam, 1 - lam): each sample dominates its own mix (fastai)

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.mode, MIX_MODES, "augment.mode")
        probability(self.prob, "augment.prob")


def _check_minmax(minmax: Optional[List[float]]) -> None:
    if minmax is not None:
        require(len(minmax) == 2 and 0.0 < minmax[0] < minmax[1] <= 1.0, "augment.minmax",
                 "must be [min, max] with 0 < min < max <= 1", minmax)


@dataclass
class MixupConfig(MixConfig):
    """Mixup (Zhang et al. 2018): blend two images and their labels with lam ~ Beta(alpha, alpha)."""

    name: str = "mixup"
    alpha: float = 1.0  # 0 disables mixing

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")


@dataclass
class RegMixupConfig(MixupConfig):
    """RegMixup (Pinto et al. 2022): train on the clean batch and on its Mixup, as one batch.

    loss = CE(clean) + eta * CE(mixed), with a large alpha (the paper's range: 10 to 20), so
    mixup acts as a regularizer beside the clean loss; it keeps Mixup's accuracy and fixes its
    calibration (Pinto et al. 2022, NeurIPS).
    """

    name: str = "regmixup"
    alpha: float = 20.0
    eta: float = 1.0  # weight of the mixed half's loss

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.eta, 0.0, "augment.eta")
        require(self.loss == "soft_ce", "augment.loss", "must be soft_ce with augment=regmixup (its two losses are "
                 "cross-entropies)", self.loss)


@dataclass
class CutmixConfig(MixConfig):
    """CutMix (Yun et al. 2019): paste a box of the partner image; labels weighted by area."""

    name: str = "cutmix"
    alpha: float = 1.0  # 0 disables mixing
    minmax: Optional[List[float]] = None  # box side range as fractions of the image (timm's cutmix_minmax)
    correct_lam: bool = True  # lam = exact kept area after the box is clipped at the border

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")
        _check_minmax(self.minmax)


@dataclass
class SwitchConfig(MixConfig):
    """Mixup or CutMix, chosen per batch (or per pair / sample) with probability switch_prob for CutMix."""

    name: str = "switch"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup
    minmax: Optional[List[float]] = None
    correct_lam: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.mixup_alpha, 0.0, "augment.mixup_alpha")
        at_least(self.cutmix_alpha, 0.0, "augment.cutmix_alpha")
        probability(self.switch_prob, "augment.switch_prob")
        _check_minmax(self.minmax)


@dataclass
class ManifoldConfig(MixConfig):
    """Manifold Mixup (Verma et al. 2019): Mixup of hidden states after a random stage."""

    name: str = "manifold"
    alpha: float = 2.0  # the paper's value for CIFAR
    layers: List[int] = field(default_factory=lambda: [0, 1, 2])  # 0 = input, k = after stage k

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")
        require(len(self.layers) > 0 and all(k >= 0 for k in self.layers), "augment.layers",
                 "must list layers >= 0 (0 = input, k = after stage k)", self.layers)


