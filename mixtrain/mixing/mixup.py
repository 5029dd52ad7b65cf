"""Mixup (Zhang et al. 2018), CutMix (Yun et al. 2019), their switch, and ``none``: their schemas and
registry entries. Their mixer is the plain :class:`~mixtrain.mixing.method.Mixer`: the plan rule
(:mod:`mixtrain.mixing.plans`) draws their lambdas and boxes from Beta(alpha, alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from mixtrain.config.augment import AugmentConfig, MixConfig
from mixtrain.config.errors import at_least, probability, require
from mixtrain.mixing.method import Mixer, register_method, spec_of
from mixtrain.mixing.plans import MixSpec


def check_minmax(minmax: Optional[List[float]]) -> None:
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

    def spec(self) -> MixSpec:
        return spec_of(self, mixup_alpha=self.alpha)


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
        check_minmax(self.minmax)

    def spec(self) -> MixSpec:
        return spec_of(self, cutmix_alpha=self.alpha, switch_prob=1.0)


@dataclass
class SwitchConfig(MixConfig):
    """Mixup or CutMix, chosen per batch (or per pair / sample) with probability switch_prob for CutMix."""

    name: str = "switch"
    mixup_alpha: float = 0.8  # Beta(alpha, alpha) when mixup is drawn
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) when CutMix is drawn
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup
    minmax: Optional[List[float]] = None  # CutMix box side range [min, max] instead of alpha (timm's cutmix_minmax)
    correct_lam: bool = True  # CutMix's lambda from the box kept after clipping

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.mixup_alpha, 0.0, "augment.mixup_alpha")
        at_least(self.cutmix_alpha, 0.0, "augment.cutmix_alpha")
        probability(self.switch_prob, "augment.switch_prob")
        check_minmax(self.minmax)

    def spec(self) -> MixSpec:
        return spec_of(self, self.mixup_alpha, self.cutmix_alpha, self.switch_prob)


register_method("none", AugmentConfig, Mixer, label=lambda cfg: "ERM")
register_method("mixup", MixupConfig, Mixer)
register_method("cutmix", CutmixConfig, Mixer)
register_method("switch", SwitchConfig, Mixer, label=lambda cfg: f"switch mixup a={cfg.mixup_alpha:g}/cutmix "
                                                                  f"a={cfg.cutmix_alpha:g} p={cfg.switch_prob:g}")
