"""Batch mixing on the training device: targets as probability vectors.

This file holds the pure functions and the small stateful :class:`Mixer` that the
training loop calls once per batch.
"""

from __future__ import annotations

from typing import Tuple

import torch

from mixtrain.config import AugmentConfig


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float targets ``[B, C]``; with smoothing, ``1 - s + s/C`` on the label and ``s/C`` elsewhere (timm)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


class Mixer:
    """Turns a batch of images and integer labels into images and soft targets."""

    def __init__(self, cfg: AugmentConfig, num_classes: int, epochs: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.epochs = epochs
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank + 7)

    def active(self, epoch: int) -> bool:
        """Mixing is on except for the last ``disable_epochs`` epochs."""
        return self.cfg.name != "none" and epoch < self.epochs - self.cfg.disable_epochs

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return images, one_hot(labels, self.num_classes, self.cfg.label_smoothing)
