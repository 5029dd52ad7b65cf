"""k-mixup: a convex combination of k samples and their labels, weights ~ Dirichlet(alpha, ..., alpha).

Mixup's own generalization (Zhang et al. 2018, Sec. 3.1: "convex combinations of three or more
examples with weights sampled from a Dirichlet distribution"; on ImageNet they saw no further gain);
not the optimal-transport k-mixup of Greenewald et al. 2021, which mixes matched k-batches. With
``k = 2`` the sample's weight is Beta(alpha, alpha): Mixup's. Each sample blends with ``k - 1``
partners; in pair mode ``k`` samples form a group and share one draw of the weights, each member
taking every weight once across the group. With ``symmetric_lam`` the sample keeps the largest weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import at_least
from mixtrain.mixing.method import Mixer, register_method, spec_of
from mixtrain.mixing.plans import MixSpec


@dataclass
class KMixupConfig(MixConfig):
    """k-mixup (Zhang et al. 2018, Sec. 3.1): k samples and their labels blended, weights ~ Dirichlet(alpha)."""

    name: str = "kmixup"
    k: int = 3  # samples in each blend: the sample and k - 1 partners
    alpha: float = 1.0  # the Dirichlet's concentration; 0 disables mixing (as Mixup's alpha)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.k, 2, "augment.k")
        at_least(self.alpha, 0.0, "augment.alpha")

    def spec(self) -> MixSpec:
        return spec_of(self, lam_draw="method", partners=self.k - 1)  # the mixer draws the Dirichlet weights


class KMixupMixer(Mixer):
    def draw_weights(self, n: int, height: int, width: int):
        k, alpha = self.cfg.k, self.cfg.alpha
        if alpha == 0:
            return np.eye(k, 1).repeat(n, axis=1), None
        weights = self.rng.dirichlet(np.full(k, alpha), n).T  # [k, n]
        if self.cfg.symmetric_lam:  # swap the largest weight into the sample's own slot
            largest, entries, own = weights.argmax(0), np.arange(n), weights[0].copy()
            weights[0], weights[largest, entries] = weights[largest, entries], own
        return weights, None


register_method("kmixup", KMixupConfig, KMixupMixer, label=lambda cfg: f"kmixup k={cfg.k} a={cfg.alpha:g}")
