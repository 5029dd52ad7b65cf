"""Input-space mixing: Mixup (Zhang et al. 2018), CutMix (Yun et al. 2019), their switch, and
``none``; their schemas, the :class:`Mixer` strategy, and their registry entries.

A mixer is a plain object, not an ``nn.Module``: it owns the run's mixing randomness (a
NumPy generator seeded by run seed and rank, saved in checkpoints) and turns a batch into
mixed images and soft targets. :meth:`Mixer.mixed_forward` is where a mixer meets the
model; Manifold Mixup (:mod:`mixtrain.mixing.manifold`) mixes inside it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mixtrain.config.augment import AugmentConfig, MixConfig
from mixtrain.config.errors import at_least, probability, require
from mixtrain.errors import MixtrainError
from mixtrain.mixing.method import register_method
from mixtrain.mixing.plans import MixPlan, MixSpec, draw_plan, mix_images, mix_spec, mix_targets, one_hot

# --------------------------------------------------------------------------- schemas


def check_minmax(minmax: Optional[List[float]]) -> None:
    if minmax is not None:
        require(len(minmax) == 2 and 0.0 < minmax[0] < minmax[1] <= 1.0, "augment.minmax",
                "must be [min, max] with 0 < min < max <= 1", minmax)


def spec_of(cfg: MixConfig, mixup_alpha: float, cutmix_alpha: float, switch_prob: float) -> MixSpec:
    minmax = getattr(cfg, "minmax", None)  # CutMix's keys, on the configs that can cut
    return MixSpec(float(mixup_alpha), float(cutmix_alpha), float(switch_prob), float(cfg.prob), cfg.mode,
                   tuple(minmax) if minmax else None, getattr(cfg, "correct_lam", True), cfg.symmetric_lam)


@dataclass
class MixupConfig(MixConfig):
    """Mixup (Zhang et al. 2018): blend two images and their labels with lam ~ Beta(alpha, alpha)."""

    name: str = "mixup"
    alpha: float = 1.0  # 0 disables mixing

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")

    def spec(self) -> MixSpec:
        return spec_of(self, self.alpha, 0.0, 0.0)


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
        return spec_of(self, 0.0, self.alpha, 1.0)


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


# --------------------------------------------------------------------------- the mixer


class Mixer:
    """Draws a plan per batch from its own generator and applies it.

    Lives in the main process and runs on the training device, after the batch is
    formed, so ``disable_epochs`` always takes effect (there is no worker copy of it).
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, epochs: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg = cfg
        self.spec = mix_spec(cfg)
        self.num_classes = num_classes
        self.epochs = epochs
        # One stream per (run seed, rank): ranks mix their own local batches independently.
        self.rng = np.random.default_rng([seed, rank, 17])

    def active(self, epoch: int) -> bool:
        """Mixing is on except for the last ``disable_epochs`` epochs (and never for ``none``)."""
        return isinstance(self.cfg, MixConfig) and epoch < self.epochs - self.cfg.disable_epochs

    def state_dict(self) -> Dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise MixtrainError("the checkpoint's mixing state was written by an older mixtrain (a torch "
                                "generator): finish that run with the mixtrain that started it")
        self.rng.bit_generator.state = state

    def draw_plan(self, batch_size: int, height: int, width: int) -> MixPlan:
        return draw_plan(self.spec, self.rng, batch_size, height, width)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return one_hot(labels, self.num_classes, self.cfg.label_smoothing)

    def row_sums(self, rows: int, own: int) -> torch.Tensor:
        """What each of the ``rows`` target rows of a batch of ``own`` samples sums to: 1, each a
        distribution over the classes (``debug=anomaly`` checks it)."""
        return torch.ones(rows)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Input-space mixing: ``(mixed images, soft targets)``; ``images`` is mixed in place.

        The first ``len(labels)`` rows are the batch's own samples (RegMixup appends more)."""
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        plan = self.draw_plan(images.shape[0], *images.shape[-2:])
        return mix_images(images, plan, inplace=True), mix_targets(targets, plan)

    def mixed_forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)`` for one training batch, mixing wherever this augment mixes."""
        images, targets = self(images, labels, epoch)
        return model(images), targets


register_method("none", AugmentConfig, Mixer, label=lambda cfg: "ERM")
register_method("mixup", MixupConfig, Mixer)
register_method("cutmix", CutmixConfig, Mixer)
register_method("switch", SwitchConfig, Mixer, label=lambda cfg: f"switch mixup a={cfg.mixup_alpha:g}/cutmix "
                                                                  f"a={cfg.cutmix_alpha:g} p={cfg.switch_prob:g}")
