"""The optimizer and the learning-rate schedule, each from timm's own factory, whole.

``optim.*`` goes to :func:`timm.optim.create_optimizer_v2` (every optimizer timm lists, its
weight-decay and layer-decay parameter groups) and ``sched.*`` to
:func:`timm.scheduler.create_scheduler_v2`, stepped as timm's ``train.py`` steps it:
``step_update`` after every optimizer update and ``step`` after every epoch's evaluation, with
the run's objective as the plateau's metric. What mixtrain adds: ``optim.head_lr``, the schedule
fitted inside ``trainer.epochs``, and the schedule's state in the checkpoint (exact resume).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch import nn

from mixtrain.config import OptimConfig, SchedConfig, TrainConfig
from mixtrain.errors import MixtrainError
from mixtrain.layout import objective_metric


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """``optim.lr``, scaled from ``optim.lr_base_batch`` to the global batch when set (timm's --lr-base):
    linearly, or by the square root (timm's rule picks by optimizer: :meth:`OptimConfig.base_scale`)."""
    if not cfg.lr_base_batch:
        return cfg.lr
    ratio = batch_size / cfg.lr_base_batch
    return cfg.lr * (math.sqrt(ratio) if cfg.base_scale() == "sqrt" else ratio)


def classifier_prefixes(model: nn.Module) -> List[str]:
    """The parameter-name prefixes of the model's classifier, as timm's pretrained_cfg names them."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    return [head] if isinstance(head, str) else list(head or [])


def head_lr_groups(groups: List[Dict[str, Any]], model: nn.Module, scale: float) -> List[Dict[str, Any]]:
    """timm's parameter groups, each split into its classifier and backbone parameters; the classifier's
    ``lr_scale`` (which timm's schedulers apply) multiplied by ``scale``."""
    prefixes = classifier_prefixes(model)
    names = {id(p): n for n, p in model.named_parameters()}
    in_head = {id(p) for p in model.parameters() if any(names[id(p)].startswith(h) for h in prefixes)}
    if not prefixes or not in_head:
        raise MixtrainError(f"optim.head_lr needs to know the model's classifier, and {type(model).__name__} has no "
                            "pretrained_cfg['classifier'] naming it: drop optim.head_lr, or use optim.layer_decay")
    split = []
    for group in groups:
        head = [p for p in group["params"] if id(p) in in_head]
        rest = [p for p in group["params"] if id(p) not in in_head]
        if rest:
            split.append({**group, "params": rest})
        if head:
            split.append({**group, "params": head, "lr_scale": group.get("lr_scale", 1.0) * scale})
    return split


def create_optimizer(cfg: OptimConfig, model: nn.Module, lr: Optional[float] = None) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` with ``optim.*``; ``lr`` (the batch-scaled LR) in place of ``optim.lr``."""
    lr = cfg.lr if lr is None else lr
    kwargs: Dict[str, Any] = dict(cfg.kwargs)
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    if cfg.eps is not None:
        kwargs["eps"] = cfg.eps
    if cfg.layer_decay is not None:
        kwargs["layer_decay"] = cfg.layer_decay
        if cfg.layer_decay_min_scale:  # timm >= 1.0.20 has it
            kwargs["layer_decay_min_scale"] = cfg.layer_decay_min_scale
    if cfg.head_lr is not None:
        kwargs["param_group_fn"] = lambda m: head_lr_groups(timm_param_groups(m, cfg), m, cfg.head_lr / lr)
    try:
        return create_optimizer_v2(model, opt=cfg.name, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                   filter_bias_and_bn=cfg.filter_bias_and_bn, **kwargs)
    except TypeError as ex:  # an argument the optimizer's class does not take
        raise MixtrainError(f"timm's {cfg.name!r} optimizer refused its arguments ({str(ex).splitlines()[0]}): "
                            "drop that key from optim.kwargs (or optim.betas / optim.eps)") from None


def timm_param_groups(model: nn.Module, cfg: OptimConfig) -> List[Dict[str, Any]]:
    """The groups ``create_optimizer_v2`` makes for ``cfg`` itself (weight decay, layer decay), from timm."""
    skip = getattr(model, "no_weight_decay", lambda: set())()
    if cfg.layer_decay is not None:
        extra = {"min_scale": cfg.layer_decay_min_scale} if cfg.layer_decay_min_scale else {}
        return param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
                                        no_weight_decay_list=skip, weight_decay_exclude_1d=cfg.filter_bias_and_bn,
                                        **extra)
    if cfg.weight_decay and cfg.filter_bias_and_bn:
        return param_groups_weight_decay(model, weight_decay=cfg.weight_decay, no_weight_decay_list=skip)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]


# --------------------------------------------------------------------------- the schedule


def scheduler_kwargs(cfg: SchedConfig, epochs: int, updates_per_epoch: int, seed: int) -> Dict[str, Any]:
    """``create_scheduler_v2``'s arguments for ``sched.*`` in a run of ``epochs`` (timm's names)."""
    milestones = list(cfg.decay_milestones) or [epochs // 2, epochs * 3 // 4]
    noise = None if cfg.noise is None else (cfg.noise[0] if len(cfg.noise) == 1 else list(cfg.noise))
    return dict(sched=cfg.name, num_epochs=cfg.schedule_epochs(epochs), decay_epochs=cfg.decay_epochs,
                decay_milestones=milestones, cooldown_epochs=cfg.cooldown_epochs, patience_epochs=cfg.patience_epochs,
                decay_rate=cfg.decay_rate, min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                warmup_prefix=cfg.warmup_prefix, noise=noise, noise_pct=cfg.noise_pct, noise_std=cfg.noise_std,
                noise_seed=seed, cycle_mul=cfg.cycle_mul, cycle_decay=cfg.cycle_decay, cycle_limit=cfg.cycle_limit,
                k_decay=cfg.k_decay, step_on_epochs=cfg.step_on == "epoch", updates_per_epoch=updates_per_epoch)


class Schedule:
    """A timm scheduler, stepped as timm's ``train.py`` steps it, with its state for the checkpoint.

    A schedule of timm's is a function of the step (noise included: seeded by step), so a checkpoint
    needs only the plateau's own state (its best value, bad epochs, cooldown, the LR before noise).
    """

    def __init__(self, cfg: SchedConfig, optimizer: torch.optim.Optimizer, epochs: int, updates_per_epoch: int,
                 seed: int, plateau_mode: str = "max") -> None:
        self.name, self.optimizer = cfg.name, optimizer
        self.on_updates = cfg.step_on == "update"
        with warnings.catch_warnings():
            # timm deprecates its plateau because its state_dict leaves out the counters; this one saves them.
            warnings.filterwarnings("ignore", "PlateauLRScheduler is deprecated", FutureWarning)
            self.scheduler, _ = create_scheduler_v2(optimizer, plateau_mode=plateau_mode,
                                                    **scheduler_kwargs(cfg, epochs, updates_per_epoch, seed))

    def step_update(self, num_updates: int) -> None:
        """After an optimizer update: ``num_updates`` done since the run's start (timm: per-update schedules)."""
        self.scheduler.step_update(num_updates=num_updates)

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        """After epoch ``epoch - 1``'s evaluation (timm: per-epoch schedules; the plateau's metric)."""
        self.scheduler.step(epoch, metric)

    def lr(self) -> float:
        """The schedule's LR now (group 0's, before its layer-decay or head scale)."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)

    def lr_at(self, epoch: int, num_updates: int) -> float:
        """The schedule's LR at a position (noise aside), without stepping: what a resume continues with."""
        if self.name == "plateau":
            return self.lr()
        return self.scheduler._get_lr(num_updates if self.on_updates else epoch)[0]  # timm's schedule function

    def state_dict(self) -> Dict[str, Any]:
        if self.name != "plateau":
            return {}
        return {"plateau": self.scheduler.lr_scheduler.state_dict(), "restore_lr": self.scheduler.restore_lr}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "lr_lambdas" in state:  # a LambdaLR's: a checkpoint of a mixtrain before timm's schedules
            raise MixtrainError("the checkpoint's schedule was written by a mixtrain before it used timm's "
                                "schedulers: resume it with that mixtrain version, or start a new run from its weights")
        if self.name == "plateau" and "plateau" in state:
            self.scheduler.lr_scheduler.load_state_dict(state["plateau"])
            self.scheduler.restore_lr = state["restore_lr"]


def schedule_metric(cfg: TrainConfig) -> Optional[Tuple[str, str]]:
    """What a plateau schedule steps on: the record key of the run's objective (the EMA weights' with
    ``trainer.ema.select_best``) and its direction; None for the other schedules."""
    if cfg.sched.name != "plateau":
        return None
    key, mode = objective_metric(cfg.objective)
    if cfg.trainer.ema.enabled and cfg.trainer.ema.select_best and key.startswith("val_"):
        key = f"ema_{key}"
    return key, mode
