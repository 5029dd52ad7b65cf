"""Typed config schemas of the optimizer, the schedule, the trainer and the run as a whole.

Each YAML option in ``conf/<group>/`` starts from a schema registered in Hydra's ConfigStore
(``/schema/<group>/<kind>``), so a wrong type or an unknown key fails when Hydra composes the
config. Range checks live in ``__post_init__`` and run when :func:`to_object` turns the composed
config into these dataclasses, before any work starts. The dataset, model and augment schemas
live with their registry entries (``mixtrain/data``, ``mixtrain/models``, ``mixtrain/mixing``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixtrain.config.augment import AugmentConfig
from mixtrain.config.errors import at_least, choice, require, valid_device, valid_seed
from mixtrain.config.dataset import StreamedConfig
from mixtrain.config.registry import Entry, check_run, entry_of, logger_kind, option_names, register
from mixtrain.errors import MixtrainError
from mixtrain.layout import OBJECTIVES, objective_metric

# --------------------------------------------------------------------------- optim


@dataclass
class OptimConfig:
    """Any optimizer timm lists (timm.optim.list_optimizers()), built by timm.optim.create_optimizer_v2.

    The typed keys are timm's common arguments (``--opt``, ``--lr``, ``--weight-decay``, ``--momentum``,
    ``--opt-betas``, ``--opt-eps``, ``--layer-decay``); ``kwargs`` passes any other argument of the
    optimizer's class (``--opt-kwargs``). The ``optim=sgd|adamw|lamb`` options are presets of this one schema.
    """

    name: str = MISSING  # timm's optimizer name (sgd, momentum, adamw, lamb, lion, adopt, lars, ...; lookahead_<name>)
    lr: float = 0.1  # peak learning rate (after warmup)
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw, lamb and the other *w optimizers)
    momentum: float = 0.9  # for optimizers with momentum (timm passes it to those only)
    betas: Optional[List[float]] = None  # Adam-style running-average coefficients; null: the optimizer's default
    eps: Optional[float] = None  # added to the denominator; null: the optimizer's default
    # Exempt norm weights and biases (all 1-d parameters) and the model's no_weight_decay() from weight decay.
    filter_bias_and_bn: bool = True
    # Layer-wise learning-rate decay (BEiT; timm's --layer-decay): the LR of layer i is scaled by
    # layer_decay ** (last - i), the head keeping the full LR. null: off.
    layer_decay: Optional[float] = None
    layer_decay_min_scale: float = 0.0  # no layer's scale goes below this (timm's --layer-decay-min-scale)
    # The classifier's own learning rate (a new head trains faster than the backbone); null: optim.lr.
    # Needs a model whose pretrained_cfg names its classifier (timm's and the bundled models do).
    head_lr: Optional[float] = None
    # Set: optim.lr is for a global batch of this size and is scaled to trainer.batch_size
    # (timm's --lr-base / --lr-base-size).
    lr_base_batch: Optional[int] = None
    # How optim.lr scales with the batch: linear (Goyal et al. 2017) | sqrt; null: timm's rule
    # (sqrt for the ada* and lamb optimizers, linear for the rest).
    lr_base_scale: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)  # any other argument of the optimizer (timm's --opt-kwargs)

    def __post_init__(self) -> None:
        valid_optimizer(self.name, "optim.name")
        require(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        at_least(self.weight_decay, 0.0, "optim.weight_decay")
        require(0.0 <= self.momentum < 1.0, "optim.momentum", "must be in [0, 1)", self.momentum)
        if self.betas is not None:
            require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas",
                    "must be two values in [0, 1)", self.betas)
        if self.eps is not None:
            require(self.eps > 0, "optim.eps", "must be > 0", self.eps)
        if self.layer_decay is not None:
            require(0.0 < self.layer_decay <= 1.0, "optim.layer_decay", "must be in (0, 1]", self.layer_decay)
        require(0.0 <= self.layer_decay_min_scale <= 1.0, "optim.layer_decay_min_scale", "must be in [0, 1]",
                self.layer_decay_min_scale)
        if self.head_lr is not None:
            require(self.head_lr > 0, "optim.head_lr", "must be > 0", self.head_lr)
        if self.lr_base_batch is not None:
            at_least(self.lr_base_batch, 1, "optim.lr_base_batch")
        if self.lr_base_scale is not None:
            choice(self.lr_base_scale, ("linear", "sqrt"), "optim.lr_base_scale")
        for key in ("lr", "weight_decay", "momentum", "betas", "eps", "params", "foreach"):
            require(key not in self.kwargs, f"optim.kwargs.{key}",
                    f"is {'a key of its own: set optim.' + key if key in ('lr', 'weight_decay', 'momentum', 'betas', 'eps') else 'set by mixtrain'}",
                    self.kwargs[key] if key in self.kwargs else None)

    def base_scale(self) -> str:
        """``lr_base_scale``, or timm's rule when unset (train.py: sqrt for ada* and lamb, else linear)."""
        if self.lr_base_scale:
            return self.lr_base_scale
        return "sqrt" if any(part in self.name.lower() for part in ("ada", "lamb")) else "linear"


def valid_optimizer(name: str, key: str) -> None:
    """``name`` is one of timm's optimizers (an optional ``lookahead_`` prefix), else one line with the close ones."""
    # timm's optimizer registry: its list is the one truth (0.6 s to import, paid by every run that trains)
    from timm.optim import list_optimizers

    known = list_optimizers()
    base = name.lower().split("_")[-1]
    if base not in known or (name.count("_") and not name.lower().startswith("lookahead_")):
        close = difflib.get_close_matches(base, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise MixtrainError(f"{key}={name!r} is not one of timm's {len(known)} optimizers{hint} "
                            "(python -c 'import timm.optim; print(timm.optim.list_optimizers())')")


# --------------------------------------------------------------------------- sched


# The schedules timm.scheduler.create_scheduler_v2 builds (since timm 1.0.12, the oldest mixtrain takes).
SCHEDULES = ("cosine", "tanh", "step", "multistep", "plateau", "poly")


@dataclass
class SchedConfig:
    """A learning-rate schedule of timm's, built by timm.scheduler.create_scheduler_v2.

    The keys are timm's (train.py's flags with ``sched.`` in front: ``--warmup-lr`` is
    ``sched.warmup_lr``, ``--lr-cycle-mul`` is ``sched.cycle_mul``, ``--lr-noise`` is ``sched.noise``).
    One difference: ``trainer.epochs`` is the whole run, and the schedule (its warmup prefix, cycles and
    cooldown) is fitted inside it; timm's ``--epochs`` leaves out the cooldown.
    """

    name: str = MISSING  # cosine | tanh | step | multistep | plateau | poly
    # update: every optimizer step (timm's --sched-on-updates) | epoch: once per epoch (timm's default)
    step_on: str = "update"
    min_lr: float = 0.0  # the LR the schedule decays to (cosine, tanh, poly, plateau)
    warmup_epochs: float = 0.0  # linear warmup from warmup_lr, may be fractional with step_on=update
    warmup_lr: float = 1e-5  # the LR at the start of warmup
    warmup_prefix: bool = False  # warmup comes before the schedule, which then starts at its peak
    cooldown_epochs: float = 0.0  # epochs at min_lr at the end of the run
    decay_epochs: float = 30.0  # step: decay every this many epochs
    decay_milestones: List[int] = field(default_factory=list)  # multistep: decay at these epochs; empty: 1/2, 3/4 of the run
    decay_rate: float = 0.1  # the factor of each decay (step, multistep, plateau); poly: the power
    patience_epochs: int = 10  # plateau: evaluations without improvement of the objective before it decays
    cycle_mul: float = 1.0  # each cycle this much longer than the one before (cosine, tanh, poly)
    cycle_decay: float = 0.1  # each cycle's peak this fraction of the one before
    cycle_limit: int = 1  # cycles in the run
    k_decay: float = 1.0  # k-decay (Zhang et al. 2020; cosine, poly)
    # LR noise (timm's --lr-noise): on from this fraction of the schedule, or [on, off] fractions; null: off.
    noise: Optional[List[float]] = None
    noise_pct: float = 0.67  # the noise's limit, as a fraction of the LR
    noise_std: float = 1.0  # the noise's standard deviation

    def __post_init__(self) -> None:
        choice(self.name, SCHEDULES, "sched.name")
        choice(self.step_on, ("update", "epoch"), "sched.step_on")
        for key in ("min_lr", "warmup_epochs", "warmup_lr", "cooldown_epochs", "k_decay"):
            at_least(getattr(self, key), 0.0, f"sched.{key}")
        require(self.decay_epochs > 0, "sched.decay_epochs", "must be > 0", self.decay_epochs)
        require(list(self.decay_milestones) == sorted(self.decay_milestones) and all(m > 0 for m in self.decay_milestones),
                "sched.decay_milestones", "must be increasing positive epochs", self.decay_milestones)
        require(self.decay_rate > 0, "sched.decay_rate", "must be > 0", self.decay_rate)
        at_least(self.patience_epochs, 0, "sched.patience_epochs")
        require(self.cycle_mul > 0, "sched.cycle_mul", "must be > 0", self.cycle_mul)
        at_least(self.cycle_limit, 1, "sched.cycle_limit")
        if self.noise is not None:
            require(len(self.noise) in (1, 2) and all(0.0 <= n for n in self.noise), "sched.noise",
                    "must be [on] or [on, off]: fractions of the schedule", self.noise)
        require(not (self.name == "plateau" and self.step_on == "update"), "sched.step_on",
                "must be epoch for sched=plateau (it steps on each evaluation's objective, as timm's does)",
                self.step_on)

    def cycles(self) -> float:
        """The run's cycles, each counted in units of the first (cycle_mul ** i summed)."""
        if self.cycle_mul == 1.0:
            return float(self.cycle_limit)
        return sum(self.cycle_mul ** i for i in range(self.cycle_limit))

    def schedule_epochs(self, epochs: int) -> float:
        """timm's ``num_epochs`` (one cycle, without the warmup prefix and the cooldown) for a run of ``epochs``."""
        return (epochs - self.cooldown_epochs - (self.warmup_epochs if self.warmup_prefix else 0.0)) / self.cycles()


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
    limit_train_batches: Optional[int] = None  # smoke runs: stop each epoch's training after this many batches
    # Evaluate this many batches: a seeded sample of val spread over the classes, the same every epoch (said at start).
    limit_val_batches: Optional[int] = None

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
    debug: Any = None  # the debug group: debug=<option> checks a config rather than train it (none by default)
    seed: int = 0  # seeds weights, data order, augmentation and mixing (0 <= seed < 2**32)
    resume: Optional[str] = None  # a run dir (or its last.pt) to continue
    # A new run starting from another run's model weights: a run dir (its best.pt, else last.pt) or a
    # checkpoint file; a new classifier when the classes differ; optimizer, schedule and epochs start anew.
    init_from: Optional[str] = None
    init_from_ema: bool = False  # with init_from: take the checkpoint's EMA weights (runs with trainer.ema.enabled)
    # The summary value `mixtrain train` returns to Hydra, so a sweeper (e.g. Optuna)
    # optimises it; pick the sweeper's direction to match (accuracies up, ECE/NLL down). Its
    # metric also picks best.pt, and every best_* figure of summary.json is that epoch's.
    objective: str = "best_val_acc1"

    def __post_init__(self) -> None:
        valid_seed(self.seed, "seed")
        require(not (self.resume and self.init_from), "init_from",
                "starts a new run and resume continues one: pass one of them", self.init_from)
        require(self.init_from or not self.init_from_ema, "init_from_ema", "needs init_from", self.init_from_ema)
        choice(self.objective, OBJECTIVES, "objective")
        require("ema_" not in self.objective or self.trainer.ema.enabled, "objective",
                "needs trainer.ema.enabled=true (an EMA objective follows the EMA weights)", self.objective)
        if isinstance(self.augment, AugmentConfig):
            require(self.augment.disable_epochs <= self.trainer.epochs, "augment.disable_epochs",
                    f"must be <= trainer.epochs ({self.trainer.epochs})", self.augment.disable_epochs)
        require(self.sched.warmup_epochs < self.trainer.epochs or self.sched.warmup_epochs == 0,
                "sched.warmup_epochs", f"must be < trainer.epochs ({self.trainer.epochs})", self.sched.warmup_epochs)
        self.logger = {key: typed_logger(key, node) for key, node in self.logger.items()}
        check_run(self)  # each option's own checks against the whole run (its registry entry)
        if isinstance(self.dataset, StreamedConfig):  # the model's own preprocessing where the data sets none
            model = entry_of("model", self.model)
            # Where each value came from, for the run's first line (not a key: the values are what is saved).
            self.dataset.preprocessing_from = self.dataset.resolve_preprocessing(
                model.preprocessing(self.model) if model is not None else None)


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


class SchedEntry(Entry):
    def check_run(self, config: SchedConfig, run: "TrainConfig") -> None:
        epochs = run.trainer.epochs
        require(config.schedule_epochs(epochs) > 0, "sched.cooldown_epochs",
                f"with the warmup prefix must leave some of trainer.epochs ({epochs}) to the schedule",
                config.cooldown_epochs)
        require(all(m < epochs for m in config.decay_milestones), "sched.decay_milestones",
                f"must be < trainer.epochs ({epochs})", config.decay_milestones)
        require(config.name != "plateau" or objective_metric(run.objective) is not None, "objective",
                "has no per-epoch value for sched=plateau to step on: pick another objective", run.objective)


class FactoryEntry(Entry):
    """The one schema of a group built by a timm factory: it owns every saved config of the group (any
    optimizer or schedule timm takes); its options (``names``) are the presets in ``conf/<group>/``."""

    def owns(self, saved: Dict[str, Any]) -> bool:
        return True


class SchedFactoryEntry(FactoryEntry, SchedEntry):
    pass


register(FactoryEntry("optim", "timm", OptimConfig, names=("sgd", "adamw", "lamb")))
register(SchedFactoryEntry("sched", "timm", SchedConfig, names=SCHEDULES))
