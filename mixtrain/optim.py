"""Optimizer and per-step learning-rate schedule factories."""

from __future__ import annotations

import math
from typing import Callable, List

import torch
from torch import nn

from mixtrain.config import AdamWConfig, CosineConfig, LambConfig, MultiStepConfig, OptimConfig, SchedConfig, SGDConfig


def param_groups(model: nn.Module, weight_decay: float, filter_bias_and_bn: bool) -> List[dict]:
    """One group, or two with norm weights and biases (every 1-d parameter) not decayed."""
    if not filter_bias_and_bn or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.filter_bias_and_bn)
    if isinstance(cfg, SGDConfig):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if isinstance(cfg, AdamWConfig):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if isinstance(cfg, LambConfig):
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                    max_grad_norm=cfg.max_grad_norm, trust_clip=cfg.trust_clip, always_adapt=cfg.always_adapt)
    raise TypeError(f"no optimizer for {type(cfg).__name__}")


def lr_factor(cfg: SchedConfig, base_lr: float, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """``step -> lr / base_lr``: linear warmup, then cosine decay to ``min_lr`` or steps at milestones."""
    total = steps_per_epoch * epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if isinstance(cfg, MultiStepConfig):
        milestones = cfg.milestones or [epochs // 2, epochs * 3 // 4]

    def factor(step: int) -> float:
        if step < warmup:
            return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup
        if isinstance(cfg, CosineConfig):
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            floor = cfg.min_lr / base_lr
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if isinstance(cfg, MultiStepConfig):
            return cfg.gamma ** sum(step >= m * steps_per_epoch for m in milestones)
        raise TypeError(f"no schedule for {type(cfg).__name__}")

    return factor


def create_scheduler(cfg: SchedConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                     epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, base_lr, steps_per_epoch, epochs))
