"""Losses on soft targets (probability vectors), so mixing needs no change to the loop."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from mixtrain.config import AugmentConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c targets_c * log softmax(logits)_c``, in float32."""
    return F.cross_entropy(logits.float(), targets.float())


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
    """Per-class sigmoid BCE on soft targets (timm's ResNet Strikes Back loss).

    With ``threshold``, targets above it become 1 and the rest 0, as in timm's
    ``BinaryCrossEntropy(target_threshold=...)``.
    """
    targets = targets.float()
    if threshold is not None:
        targets = (targets > threshold).float()
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


LOSSES: Dict[str, Callable[[AugmentConfig], Loss]] = {
    "soft_ce": lambda cfg: soft_target_cross_entropy,
    "bce": lambda cfg: lambda logits, targets: binary_cross_entropy(logits, targets, cfg.bce_target_threshold),
}


def create_loss(cfg: AugmentConfig) -> Loss:
    return LOSSES[cfg.loss](cfg)


def target_entropy(targets: torch.Tensor) -> float:
    """Mean entropy (nats) of soft targets, each row normalized to a distribution first."""
    p = targets.double() / targets.double().sum(1, keepdim=True)
    return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
