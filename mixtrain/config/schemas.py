"""Typed config schemas of the optimizer, the schedule, the trainer and the run as a whole.

Each YAML option in ``conf/<group>/`` starts from a schema registered in Hydra's ConfigStore
(``/schema/<group>/<kind>``), so a wrong type or an unknown key fails when Hydra composes the
config. Range checks live in ``__post_init__`` and run when :func:`to_object` turns the composed
config into these dataclasses, before any work starts. The dataset, model and augment schemas
live with their registry entries (``mixtrain/data``, ``mixtrain/models``, ``mixtrain/mixing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixtrain.config.augment import AugmentConfig
from mixtrain.config.errors import at_least, choice, require, valid_device, valid_seed
from mixtrain.config.registry import Entry, check_run, entry_of, logger_kind, option_names, register
from mixtrain.errors import MixtrainError
from mixtrain.layout import OBJECTIVES

# --------------------------------------------------------------------------- optim


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 0.1  # peak learning rate (after warmup)
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw and lamb)
    # Exempt norm weights and biases (all 1-d parameters) from weight decay, as timm does.
    filter_bias_and_bn: bool = False
    # Set: optim.lr is for a global batch of this size and is scaled linearly to
    # trainer.batch_size (timm's --lr-base / --lr-base-size, Goyal et al. 2017).
    lr_base_batch: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        at_least(self.weight_decay, 0.0, "optim.weight_decay")
        if self.lr_base_batch is not None:
            at_least(self.lr_base_batch, 1, "optim.lr_base_batch")


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    momentum: float = 0.9  # heavy-ball momentum
    nesterov: bool = False  # Nesterov momentum

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.momentum < 1.0, "optim.momentum", "must be in [0, 1)", self.momentum)
        require(not self.nesterov or self.momentum > 0, "optim.nesterov", "needs optim.momentum > 0", self.nesterov)


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's running-average coefficients
    eps: float = 1e-8  # added to the denominator for stability

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas", "must be two values in [0, 1)", self.betas)
        require(self.eps > 0, "optim.eps", "must be > 0", self.eps)


@dataclass
class LambConfig(OptimConfig):
    """LAMB (You et al. 2020) as ``timm.optim.Lamb``: Adam steps scaled per tensor by a trust ratio.

    The defaults are timm's, and ResNet Strikes Back's (Wightman et al. 2021), which
    exempts norm weights and biases from weight decay (timm's ``filter_bias_and_bn``).
    """

    name: str = "lamb"
    lr: float = 5e-3
    weight_decay: float = 0.02
    filter_bias_and_bn: bool = True
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's running-average coefficients
    eps: float = 1e-6  # added to the denominator for stability
    max_grad_norm: Optional[float] = 1.0  # clip the global gradient norm inside the optimizer; None: off
    trust_clip: bool = False  # clip the trust ratio at 1 (LAMBC)
    always_adapt: bool = False  # apply the trust ratio to tensors without weight decay too

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas", "must be two values in [0, 1)", self.betas)
        require(self.eps > 0, "optim.eps", "must be > 0", self.eps)
        if self.max_grad_norm is not None:
            require(self.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0 (or null to turn clipping off)", self.max_grad_norm)


# --------------------------------------------------------------------------- sched


@dataclass
class SchedConfig:
    """Learning-rate schedule, stepped every optimizer step (or once per epoch)."""

    name: str = MISSING
    warmup_epochs: float = 0.0  # linear warmup, may be fractional
    warmup_start_factor: float = 0.1  # warmup starts at lr * this
    step_on: str = "update"  # update: every optimizer step | epoch: once per epoch (RSB, timm's default)

    def __post_init__(self) -> None:
        at_least(self.warmup_epochs, 0.0, "sched.warmup_epochs")
        choice(self.step_on, ("update", "epoch"), "sched.step_on")
        require(0.0 < self.warmup_start_factor <= 1.0, "sched.warmup_start_factor", "must be in (0, 1]", self.warmup_start_factor)


@dataclass
class CosineConfig(SchedConfig):
    name: str = "cosine"
    min_lr: float = 0.0  # the learning rate the cosine decays to at the last step

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.min_lr, 0.0, "sched.min_lr")


@dataclass
class MultiStepConfig(SchedConfig):
    """Multiply the learning rate by gamma at each milestone epoch."""

    name: str = "multistep"
    # Epochs at which lr *= gamma; empty: at 1/2 and 3/4 of trainer.epochs (100 and 150 of 200).
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1  # factor applied at each milestone

    def __post_init__(self) -> None:
        super().__post_init__()
        require(list(self.milestones) == sorted(self.milestones) and all(m > 0 for m in self.milestones),
                 "sched.milestones", "must be increasing positive epochs", self.milestones)
        require(0.0 < self.gamma <= 1.0, "sched.gamma", "must be in (0, 1]", self.gamma)


# --------------------------------------------------------------------------- trainer


@dataclass
class EmaConfig:
    """Model EMA (timm's ModelEmaV3): weights averaged over steps, evaluated beside the raw ones."""

    enabled: bool = False  # keep and evaluate an EMA of the weights
    decay: float = 0.9998  # per optimizer step (timm's --model-ema-decay)
    warmup: bool = False  # timm's ModelEmaV3 warmup: decay 1 - (1 + step) ** -2/3, capped at `decay`
    every: int = 1  # update every N optimizer steps (with decay ** N)
    select_best: bool = False  # best.pt, keep_best and the sweep objective follow the EMA weights

    def __post_init__(self) -> None:
        require(0.0 < self.decay < 1.0, "trainer.ema.decay", "must be in (0, 1)", self.decay)
        at_least(self.every, 1, "trainer.ema.every")


@dataclass
class TrainerConfig:
    epochs: int = 15  # epochs to train
    batch_size: int = 128  # the global batch of one optimizer step: under torchrun each process takes batch_size / world_size
    eval_batch_size: int = 512  # batch size of evaluation (no gradients: larger fits)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: on CUDA (amp_dtype); on a CPU bf16 where it is native (AVX512-BF16, AMX) and faster,
    # else fp32. true / false: as asked.
    amp: Any = "auto"
    amp_dtype: str = "fp16"  # fp16 (CUDA, with a GradScaler) | bf16 (CUDA or CPU)
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimizer step (the batch is mixed whole first)
    clip_grad: Optional[str] = None  # null | norm | value | agc (timm's dispatch_clip_grad, after fp16 unscaling)
    clip_value: float = 1.0  # max norm, max absolute value, or AGC's clipping factor
    ema: EmaConfig = field(default_factory=EmaConfig)  # model EMA: trainer.ema.* (see EmaConfig)
    channels_last: bool = True  # NHWC: ~1.3x faster for ResNet-20 on this CPU, and on GPUs with AMP
    compile: bool = False  # torch.compile the model before training
    # DataLoader workers (streaming ImageFolder path only): a count, or auto = min(8, usable cores).
    num_workers: Any = "auto"
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    log_every: int = 50  # steps between sync points: progress line, step scalars, NaN and stop checks
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    checkpoint: bool = True  # write last.pt / best.pt
    keep_best: int = 1  # also keep the k best epochs' checkpoints as epoch-NNN.pt (by the objective)
    checkpoint_every_steps: Optional[int] = None  # also write last.pt every N steps (long epochs)
    on_nan: str = "stop"  # a non-finite loss: stop (keep the last good checkpoint) | skip the step
    nan_skip_limit: int = 10  # with on_nan=skip: stop after more skipped steps than this
    # Smoke runs: stop each epoch's training / evaluation after this many batches.
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None  # the same for evaluation

    def __post_init__(self) -> None:
        at_least(self.epochs, 1, "trainer.epochs")
        at_least(self.batch_size, 1, "trainer.batch_size")
        at_least(self.eval_batch_size, 1, "trainer.eval_batch_size")
        valid_device(self.device, "trainer.device")
        if self.amp is None:  # configs saved before amp=auto
            self.amp = "auto"
        require(self.amp in ("auto", True, False), "trainer.amp", "must be auto, true or false", self.amp)
        choice(self.amp_dtype, ("fp16", "bf16"), "trainer.amp_dtype")
        at_least(self.accum_steps, 1, "trainer.accum_steps")
        require(self.batch_size // self.accum_steps >= 1, "trainer.accum_steps",
                 f"must be <= trainer.batch_size ({self.batch_size})", self.accum_steps)
        if self.clip_grad is not None:
            choice(self.clip_grad, ("norm", "value", "agc"), "trainer.clip_grad")
        require(self.clip_value > 0, "trainer.clip_value", "must be > 0", self.clip_value)
        at_least(self.keep_best, 1, "trainer.keep_best")
        require(self.num_workers == "auto" or (isinstance(self.num_workers, int) and not isinstance(self.num_workers, bool)
                                                and self.num_workers >= 0),
                 "trainer.num_workers", "must be auto or a count >= 0", self.num_workers)
        at_least(self.eval_every, 1, "trainer.eval_every")
        at_least(self.log_every, 1, "trainer.log_every")
        choice(self.on_nan, ("stop", "skip"), "trainer.on_nan")
        at_least(self.nan_skip_limit, 0, "trainer.nan_skip_limit")
        for key in ("limit_train_batches", "limit_val_batches", "checkpoint_every_steps"):
            if getattr(self, key) is not None:
                at_least(getattr(self, key), 1, f"trainer.{key}")


# --------------------------------------------------------------------------- top level


@dataclass
class TrainConfig:
    dataset: Any = MISSING  # the dataset group: dataset=<option>, then dataset.* keys
    model: Any = MISSING  # the model group: model=<option>, then model.* keys
    augment: Any = MISSING  # the mixing group: augment=<option>, then augment.* keys
    optim: Any = MISSING  # the optimizer group: optim=<option>
    sched: Any = MISSING  # the schedule group: sched=<option>
    # The logger group, a list: logger=[tensorboard,mlflow], logger=wandb, logger=[]; each one's keys
    # under logger.<name>.* (mixtrain/loggers/)
    logger: Dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # loop, device, precision, checkpoints: trainer.* keys
    seed: int = 0  # seeds weights, data order, augmentation and mixing (0 <= seed < 2**32)
    resume: Optional[str] = None  # a checkpoint file or a run dir to continue
    # The summary value `mixtrain train` returns to Hydra, so a sweeper (e.g. Optuna)
    # optimises it; pick the sweeper's direction to match (accuracies up, ECE/NLL down).
    objective: str = "best_val_acc1"

    def __post_init__(self) -> None:
        valid_seed(self.seed, "seed")
        choice(self.objective, OBJECTIVES, "objective")
        if isinstance(self.augment, AugmentConfig):
            require(self.augment.disable_epochs <= self.trainer.epochs, "augment.disable_epochs",
                    f"must be <= trainer.epochs ({self.trainer.epochs})", self.augment.disable_epochs)
        require(self.sched.warmup_epochs < self.trainer.epochs or self.sched.warmup_epochs == 0,
                "sched.warmup_epochs", f"must be < trainer.epochs ({self.trainer.epochs})", self.sched.warmup_epochs)
        self.logger = {key: typed_logger(key, node) for key, node in self.logger.items()}
        check_run(self)  # each option's own checks against the whole run (its registry entry)


def typed_logger(key: str, node: Any) -> Any:
    """A ``logger.<key>`` node as its kind's schema. A node without one (``+logger.mine._target_=...``,
    a YAML option that does not start from a schema) is read as the kind that owns its ``name``,
    else the one whose keys it has (a class of your own: ``_target_`` and ``kwargs``)."""
    if entry_of("logger", node) is not None:
        return node
    entry = logger_kind(node) if isinstance(node, dict) else None
    if entry is None:
        raise MixtrainError(f"logger.{key} is not a logger: choose from {', '.join(option_names('logger'))}, or name "
                            f"a class of your own with logger.{key}._target_=my_pkg.trackers.MyLogger (its arguments "
                            f"under logger.{key}.kwargs)")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(entry.schema), node))
    except OmegaConfBaseException as ex:
        raise MixtrainError(f"logger.{key}.{ex.full_key or ''}: {str(ex.msg).splitlines()[0]}") from None


# --------------------------------------------------------------------------- registry


class MultiStepEntry(Entry):
    def check_run(self, config: MultiStepConfig, run: TrainConfig) -> None:
        require(all(m < run.trainer.epochs for m in config.milestones), "sched.milestones",
                f"must be < trainer.epochs ({run.trainer.epochs})", config.milestones)


for _kind, _schema in (("sgd", SGDConfig), ("adamw", AdamWConfig), ("lamb", LambConfig)):
    register(Entry("optim", _kind, _schema))
register(Entry("sched", "cosine", CosineConfig))
register(MultiStepEntry("sched", "multistep", MultiStepConfig))
