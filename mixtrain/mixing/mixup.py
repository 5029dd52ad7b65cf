"""Input-space mixing (Mixup, CutMix, their switch; ``none``): the :class:`Mixer` strategy.

A mixer is a plain object, not an ``nn.Module``: it owns the run's mixing randomness (a
NumPy generator seeded by run seed and rank, saved in checkpoints) and turns a batch into
mixed images and soft targets. :meth:`Mixer.mixed_forward` is where a mixer meets the
model; Manifold Mixup (:mod:`mixtrain.mixing.manifold`) mixes inside it instead.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import nn

from mixtrain.config import AugmentConfig, MixConfig
from mixtrain.errors import MixtrainError
from mixtrain.mixing.plans import MixPlan, draw_plan, mix_images, mix_spec, mix_targets, one_hot


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


def target_entropy(targets: torch.Tensor) -> float:
    """Mean entropy (nats) of soft targets, each row normalized to a distribution first."""
    p = targets.double() / targets.double().sum(1, keepdim=True)
    return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
