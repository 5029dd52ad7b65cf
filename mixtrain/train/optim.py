"""Optimizer and per-step learning-rate schedule factories."""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

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


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """``optim.lr``, scaled linearly from ``optim.lr_base_batch`` to the global batch when set (timm's --lr-base)."""
    return cfg.lr * batch_size / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr


def build_sgd(cfg: SGDConfig, groups: List[dict], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_adamw(cfg: AdamWConfig, groups: List[dict], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_lamb(cfg: LambConfig, groups: List[dict], lr: float) -> torch.optim.Optimizer:
    from timm.optim import Lamb  # timm's model registry (0.6 s): only for optim=lamb

    return Lamb(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                max_grad_norm=cfg.max_grad_norm, trust_clip=cfg.trust_clip, always_adapt=cfg.always_adapt)


OPTIMIZERS: Dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": build_sgd, "adamw": build_adamw, "lamb": build_lamb}


def create_optimizer(cfg: OptimConfig, model: nn.Module, lr: Optional[float] = None) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.filter_bias_and_bn)
    return OPTIMIZERS[cfg.name](cfg, groups, cfg.lr if lr is None else lr)


def cosine_factor(cfg: CosineConfig, base_lr: float, progress: float, epochs_done: float, epochs: int) -> float:
    floor = cfg.min_lr / base_lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def multistep_factor(cfg: MultiStepConfig, base_lr: float, progress: float, epochs_done: float, epochs: int) -> float:
    milestones = cfg.milestones or [epochs // 2, epochs * 3 // 4]
    return cfg.gamma ** sum(epochs_done >= m for m in milestones)


# After warmup: (cfg, base lr, progress in [0, 1] past warmup, epochs done, epochs) -> factor.
SCHEDULES: Dict[str, Callable[..., float]] = {"cosine": cosine_factor, "multistep": multistep_factor}


def lr_factor(cfg: SchedConfig, base_lr: float, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """``step -> lr / base_lr``: linear warmup, then cosine decay to ``min_lr`` or steps at milestones.

    A step is an optimizer step (``sched.step_on=update``) or an epoch (``steps_per_epoch=1``).
    """
    total = steps_per_epoch * epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    after = SCHEDULES[cfg.name]

    def factor(step: int) -> float:
        if step < warmup:
            return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup
        return after(cfg, base_lr, min(1.0, (step - warmup) / max(1, total - warmup)), step / steps_per_epoch, epochs)

    return factor


def create_scheduler(cfg: SchedConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                     epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step (or once per epoch with ``steps_per_epoch=1``)."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, base_lr, steps_per_epoch, epochs))
