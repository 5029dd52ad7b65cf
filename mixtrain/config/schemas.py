"""Typed config schemas: every key has one home, here, with its default and its checks.

Each YAML option in ``conf/<group>/`` starts from one of these schemas (through the
``/schema/<group>/<kind>`` entries registered below), so a wrong type or an unknown
key fails when Hydra composes the config. Range checks live in ``__post_init__``
and run when :func:`to_object` turns the composed config into these dataclasses,
before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixtrain.errors import MixtrainError

PACKAGE_DIR = Path(__file__).resolve().parent


def _resource_dir(name: str) -> Path:
    """``conf/`` or ``recipes/``: inside the package in a wheel, beside it in a checkout."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise MixtrainError(f"mixtrain's {name}/ directory is missing from {PACKAGE_DIR}: reinstall mixtrain")


def config_dir() -> Path:
    return _resource_dir("conf")


def recipes_dir() -> Path:
    return _resource_dir("recipes")


# --------------------------------------------------------------------------- checks


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise MixtrainError(f"{key} {message} (got {value!r})")


def _choice(value: str, choices: tuple, key: str) -> None:
    _require(value in choices, key, f"must be one of {', '.join(choices)}", value)


def _probability(value: float, key: str) -> None:
    _require(0.0 <= value <= 1.0, key, "must be a probability in [0, 1]", value)


def _at_least(value: float, low: float, key: str) -> None:
    _require(value >= low, key, f"must be >= {low}", value)


# --------------------------------------------------------------------------- dataset


@dataclass
class DatasetConfig:
    name: str = MISSING
    num_classes: Optional[int] = None  # None: read from the data
    # Per-channel statistics in [0, 1] pixel units, applied on the training device.
    mean: List[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    std: List[float] = field(default_factory=lambda: [0.2470, 0.2435, 0.2616])
    crop_padding: int = 4  # random-crop padding (px) on the device-resident path
    # Fraction of training labels replaced by a uniformly random *other* class, drawn
    # from the run seed (the mixup paper's Table 2); validation labels stay clean.
    label_noise: float = 0.0
    # Random erasing (Zhong et al. 2020) as timm's RandomErasing (--reprob, --remode,
    # --recount): per training image with this probability, a box of 2-33% of the area
    # with aspect ratio in [0.3, 3.3] is filled on the normalized image, before mixing.
    random_erasing: float = 0.0
    random_erasing_mode: str = "pixel"  # const (zeros) | rand (one normal colour) | pixel (normal noise)
    random_erasing_count: int = 1  # boxes per erased image: 1..count, area split between them
    # Repeated augmentation (Hoffer et al. 2020; DeiT): each image appears this many times in
    # an epoch's order, consecutively, with its own augmentation each time (timm's
    # RepeatAugSampler: an epoch keeps the dataset's length). 1: off.
    repeated_aug: int = 1

    def __post_init__(self) -> None:
        if self.num_classes is not None:
            _at_least(self.num_classes, 2, "dataset.num_classes")
        _require(len(self.mean) == 3 and len(self.std) == 3, "dataset.mean/std", "need 3 values each", (self.mean, self.std))
        _require(all(s > 0 for s in self.std), "dataset.std", "must be positive", self.std)
        _at_least(self.crop_padding, 0, "dataset.crop_padding")
        _require(0.0 <= self.label_noise < 1.0, "dataset.label_noise", "must be in [0, 1)", self.label_noise)
        _probability(self.random_erasing, "dataset.random_erasing")
        _choice(self.random_erasing_mode, ("const", "rand", "pixel"), "dataset.random_erasing_mode")
        _at_least(self.random_erasing_count, 1, "dataset.random_erasing_count")
        _at_least(self.repeated_aug, 1, "dataset.repeated_aug")


@dataclass
class CifarConfig(DatasetConfig):
    """CIFAR-10/100 in torchvision's on-disk format (``<root>/cifar-10-batches-py``)."""

    root: str = "${oc.env:MIXTRAIN_DATA,'~/.cache/mixtrain/data'}"
    download: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.name, ("cifar10", "cifar100"), "dataset.name")


@dataclass
class MiniConfig(DatasetConfig):
    """The real CIFAR-10 subset shipped inside the package (the offline default)."""

    name: str = "cifar10_mini"
    num_classes: Optional[int] = 10


# First field of timm's auto-augment policy strings (timm.data.auto_augment).
AUTO_AUGMENT_POLICIES = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a")


@dataclass
class FolderConfig(DatasetConfig):
    """An ImageNet-style folder: ``<root>/<train_split>/<class>/*.jpg`` and the same for val."""

    name: str = "imagefolder"
    root: str = MISSING
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224  # train crop, and eval size unless eval_image_size is set
    # Eval size when it differs from training, e.g. ResNet Strikes Back A3 trains at 160
    # and tests at 224 (Touvron et al. 2019: a larger test size offsets the train/test
    # apparent-object-size gap of RandomResizedCrop).
    eval_image_size: Optional[int] = None
    crop_pct: float = 0.875  # eval: resize to eval size / crop_pct, then center crop
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    # timm's policy string for training images on the streaming path, applied after the
    # crop and flip as in timm's create_transform: rand-m6-mstd0.5-inc1 (RandAugment),
    # augmix-m5-w4-d2, original / v0 (AutoAugment). None: crop and flip only.
    auto_augment: Optional[str] = None
    # Decode every image once into a uint8 tensor on the device and augment there
    # (crop with padding + flip, as for CIFAR). Meant for small images.
    cache: bool = False
    # An unreadable image file: skip it (warn once) | error (stop before training, listing them).
    on_bad_image: str = "skip"
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.image_size, 8, "dataset.image_size")
        if self.eval_image_size is not None:
            _at_least(self.eval_image_size, 8, "dataset.eval_image_size")
        if self.auto_augment is not None:
            _require(self.auto_augment.split("-")[0] in AUTO_AUGMENT_POLICIES, "dataset.auto_augment",
                     f"must start with one of {', '.join(AUTO_AUGMENT_POLICIES)} (timm's policy strings)",
                     self.auto_augment)
            _require(not self.cache, "dataset.auto_augment",
                     "needs dataset.cache=false (the cached path augments on the device: crop and flip only)",
                     self.auto_augment)
        _require(0.0 < self.crop_pct <= 1.0, "dataset.crop_pct", "must be in (0, 1]", self.crop_pct)
        _require(
            len(self.scale) == 2 and 0.0 < self.scale[0] <= self.scale[1] <= 1.0,
            "dataset.scale", "must be [min, max] with 0 < min <= max <= 1", self.scale,
        )
        _require(self.train_split != self.val_split, "dataset.val_split", "must differ from dataset.train_split", self.val_split)
        _choice(self.on_bad_image, ("skip", "error"), "dataset.on_bad_image")


# --------------------------------------------------------------------------- model

# Bundled models and their number of stages (for Manifold Mixup's layer choice).
CIFAR_MODEL_STAGES = {"resnet20": 3, "resnet56": 3, "preact_resnet18": 4, "wrn28_10": 3}
CIFAR_MODELS = tuple(CIFAR_MODEL_STAGES)


@dataclass
class CifarModelConfig:
    """A ResNet bundled with mixtrain for 32x32 inputs (stem -> stages -> head)."""

    name: str = MISSING
    drop_rate: float = 0.0  # dropout inside wide blocks (WRN) or before the classifier

    def __post_init__(self) -> None:
        _choice(self.name, CIFAR_MODELS, "model.name")
        _probability(self.drop_rate, "model.drop_rate")


@dataclass
class TimmModelConfig:
    """Any model from timm's registry, created with ``timm.create_model``."""

    name: str = MISSING
    pretrained: bool = False  # needs network (or a local HF cache) when true
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _probability(self.drop_rate, "model.drop_rate")
        _probability(self.drop_path_rate, "model.drop_path_rate")


# --------------------------------------------------------------------------- augment


@dataclass
class AugmentConfig:
    """Batch-level augmentation applied on the device after the batch is formed."""

    name: str = "none"
    label_smoothing: float = 0.0  # applied to one-hot targets before any mixing
    disable_epochs: int = 0  # the last N epochs train without mixing
    loss: str = "soft_ce"  # soft_ce | bce
    bce_target_threshold: Optional[float] = None  # bce only: binarize targets above this

    def __post_init__(self) -> None:
        _require(0.0 <= self.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)", self.label_smoothing)
        _at_least(self.disable_epochs, 0, "augment.disable_epochs")
        _choice(self.loss, ("soft_ce", "bce"), "augment.loss")
        if self.bce_target_threshold is not None:
            _require(self.loss == "bce", "augment.bce_target_threshold", "needs augment.loss=bce", self.bce_target_threshold)
            _probability(self.bce_target_threshold, "augment.bce_target_threshold")


MIX_MODES = ("batch", "pair", "elem")


@dataclass
class MixConfig(AugmentConfig):
    """Keys shared by every mixing augment."""

    mode: str = "batch"  # batch: one lambda per batch | pair: per pair of samples | elem: per sample
    prob: float = 1.0  # probability that a batch (batch mode) or a pair/sample is mixed at all
    symmetric_lam: bool = False  # lam = max(lam, 1 - lam): each sample dominates its own mix (fastai)

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.mode, MIX_MODES, "augment.mode")
        _probability(self.prob, "augment.prob")


def _check_minmax(minmax: Optional[List[float]]) -> None:
    if minmax is not None:
        _require(len(minmax) == 2 and 0.0 < minmax[0] < minmax[1] <= 1.0, "augment.minmax",
                 "must be [min, max] with 0 < min < max <= 1", minmax)


@dataclass
class MixupConfig(MixConfig):
    """Mixup (Zhang et al. 2018): blend two images and their labels with lam ~ Beta(alpha, alpha)."""

    name: str = "mixup"
    alpha: float = 1.0  # 0 disables mixing

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.alpha, 0.0, "augment.alpha")


@dataclass
class RegMixupConfig(MixupConfig):
    """RegMixup (Pinto et al. 2022): train on the clean batch and on its Mixup, as one batch.

    loss = CE(clean) + eta * CE(mixed), with a large alpha (the paper's range: 10 to 20), so
    mixup acts as a regularizer beside the clean loss; it keeps Mixup's accuracy and fixes its
    calibration (Pinto et al. 2022, NeurIPS).
    """

    name: str = "regmixup"
    alpha: float = 20.0
    eta: float = 1.0  # weight of the mixed half's loss

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.eta, 0.0, "augment.eta")
        _require(self.loss == "soft_ce", "augment.loss", "must be soft_ce with augment=regmixup (its two losses are "
                 "cross-entropies)", self.loss)


@dataclass
class CutmixConfig(MixConfig):
    """CutMix (Yun et al. 2019): paste a box of the partner image; labels weighted by area."""

    name: str = "cutmix"
    alpha: float = 1.0  # 0 disables mixing
    minmax: Optional[List[float]] = None  # box side range as fractions of the image (timm's cutmix_minmax)
    correct_lam: bool = True  # lam = exact kept area after the box is clipped at the border

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.alpha, 0.0, "augment.alpha")
        _check_minmax(self.minmax)


@dataclass
class SwitchConfig(MixConfig):
    """Mixup or CutMix, chosen per batch (or per pair / sample) with probability switch_prob for CutMix."""

    name: str = "switch"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup
    minmax: Optional[List[float]] = None
    correct_lam: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.mixup_alpha, 0.0, "augment.mixup_alpha")
        _at_least(self.cutmix_alpha, 0.0, "augment.cutmix_alpha")
        _probability(self.switch_prob, "augment.switch_prob")
        _check_minmax(self.minmax)


@dataclass
class ManifoldConfig(MixConfig):
    """Manifold Mixup (Verma et al. 2019): Mixup of hidden states after a random stage."""

    name: str = "manifold"
    alpha: float = 2.0  # the paper's value for CIFAR
    layers: List[int] = field(default_factory=lambda: [0, 1, 2])  # 0 = input, k = after stage k

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.alpha, 0.0, "augment.alpha")
        _require(len(self.layers) > 0 and all(k >= 0 for k in self.layers), "augment.layers",
                 "must list layers >= 0 (0 = input, k = after stage k)", self.layers)


# --------------------------------------------------------------------------- optim


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 0.1
    weight_decay: float = 5e-4
    # Exempt norm weights and biases (all 1-d parameters) from weight decay, as timm does.
    filter_bias_and_bn: bool = False
    # Set: optim.lr is for a global batch of this size and is scaled linearly to
    # trainer.batch_size (timm's --lr-base / --lr-base-size, Goyal et al. 2017).
    lr_base_batch: Optional[int] = None

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _at_least(self.weight_decay, 0.0, "optim.weight_decay")
        if self.lr_base_batch is not None:
            _at_least(self.lr_base_batch, 1, "optim.lr_base_batch")


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 <= self.momentum < 1.0, "optim.momentum", "must be in [0, 1)", self.momentum)
        _require(not self.nesterov or self.momentum > 0, "optim.nesterov", "needs optim.momentum > 0", self.nesterov)


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas", "must be two values in [0, 1)", self.betas)
        _require(self.eps > 0, "optim.eps", "must be > 0", self.eps)


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
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    max_grad_norm: Optional[float] = 1.0  # clip the global gradient norm inside the optimizer; None: off
    trust_clip: bool = False  # clip the trust ratio at 1 (LAMBC)
    always_adapt: bool = False  # apply the trust ratio to tensors without weight decay too

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas", "must be two values in [0, 1)", self.betas)
        _require(self.eps > 0, "optim.eps", "must be > 0", self.eps)
        if self.max_grad_norm is not None:
            _require(self.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0 (or null to turn clipping off)", self.max_grad_norm)


# --------------------------------------------------------------------------- sched


@dataclass
class SchedConfig:
    """Learning-rate schedule, stepped every optimizer step (or once per epoch)."""

    name: str = MISSING
    warmup_epochs: float = 0.0  # linear warmup, may be fractional
    warmup_start_factor: float = 0.1  # warmup starts at lr * this
    step_on: str = "update"  # update: every optimizer step | epoch: once per epoch (RSB, timm's default)

    def __post_init__(self) -> None:
        _at_least(self.warmup_epochs, 0.0, "sched.warmup_epochs")
        _choice(self.step_on, ("update", "epoch"), "sched.step_on")
        _require(0.0 < self.warmup_start_factor <= 1.0, "sched.warmup_start_factor", "must be in (0, 1]", self.warmup_start_factor)


@dataclass
class CosineConfig(SchedConfig):
    name: str = "cosine"
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self.min_lr, 0.0, "sched.min_lr")


@dataclass
class MultiStepConfig(SchedConfig):
    name: str = "multistep"
    # Epochs at which lr *= gamma; empty: at 1/2 and 3/4 of trainer.epochs (100 and 150 of 200).
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(list(self.milestones) == sorted(self.milestones) and all(m > 0 for m in self.milestones),
                 "sched.milestones", "must be increasing positive epochs", self.milestones)
        _require(0.0 < self.gamma <= 1.0, "sched.gamma", "must be in (0, 1]", self.gamma)


# --------------------------------------------------------------------------- trainer


@dataclass
class EmaConfig:
    """Model EMA (timm's ModelEmaV3): weights averaged over steps, evaluated beside the raw ones."""

    enabled: bool = False
    decay: float = 0.9998  # per optimizer step (timm's --model-ema-decay)
    warmup: bool = False  # timm's ModelEmaV3 warmup: decay 1 - (1 + step) ** -2/3, capped at `decay`
    every: int = 1  # update every N optimizer steps (with decay ** N)
    select_best: bool = False  # best.pt, keep_best and the sweep objective follow the EMA weights

    def __post_init__(self) -> None:
        _require(0.0 < self.decay < 1.0, "trainer.ema.decay", "must be in (0, 1)", self.decay)
        _at_least(self.every, 1, "trainer.ema.every")


@dataclass
class TrainerConfig:
    epochs: int = 15
    batch_size: int = 128  # the global batch of one optimizer step: under torchrun each process takes batch_size / world_size
    eval_batch_size: int = 512
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: on CUDA (amp_dtype); on a CPU bf16 where it is native (AVX512-BF16, AMX) and faster,
    # else fp32. true / false: as asked.
    amp: Any = "auto"
    amp_dtype: str = "fp16"  # fp16 (CUDA, with a GradScaler) | bf16 (CUDA or CPU)
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimizer step (the batch is mixed whole first)
    clip_grad: Optional[str] = None  # null | norm | value | agc (timm's dispatch_clip_grad, after fp16 unscaling)
    clip_value: float = 1.0  # max norm, max absolute value, or AGC's clipping factor
    ema: EmaConfig = field(default_factory=EmaConfig)
    channels_last: bool = True  # NHWC: ~1.3x faster for ResNet-20 on this CPU, and on GPUs with AMP
    compile: bool = False
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
    limit_val_batches: Optional[int] = None

    def __post_init__(self) -> None:
        _at_least(self.epochs, 1, "trainer.epochs")
        _at_least(self.batch_size, 1, "trainer.batch_size")
        _at_least(self.eval_batch_size, 1, "trainer.eval_batch_size")
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                 "trainer.device", "must be auto, cpu, cuda or cuda:N", self.device)
        if self.amp is None:  # configs saved before amp=auto
            self.amp = "auto"
        _require(self.amp in ("auto", True, False), "trainer.amp", "must be auto, true or false", self.amp)
        _choice(self.amp_dtype, ("fp16", "bf16"), "trainer.amp_dtype")
        _at_least(self.accum_steps, 1, "trainer.accum_steps")
        _require(self.batch_size // self.accum_steps >= 1, "trainer.accum_steps",
                 f"must be <= trainer.batch_size ({self.batch_size})", self.accum_steps)
        if self.clip_grad is not None:
            _choice(self.clip_grad, ("norm", "value", "agc"), "trainer.clip_grad")
        _require(self.clip_value > 0, "trainer.clip_value", "must be > 0", self.clip_value)
        _at_least(self.keep_best, 1, "trainer.keep_best")
        _require(self.num_workers == "auto" or (isinstance(self.num_workers, int) and not isinstance(self.num_workers, bool)
                                                and self.num_workers >= 0),
                 "trainer.num_workers", "must be auto or a count >= 0", self.num_workers)
        _at_least(self.eval_every, 1, "trainer.eval_every")
        _at_least(self.log_every, 1, "trainer.log_every")
        _choice(self.on_nan, ("stop", "skip"), "trainer.on_nan")
        _at_least(self.nan_skip_limit, 0, "trainer.nan_skip_limit")
        for key in ("limit_train_batches", "limit_val_batches", "checkpoint_every_steps"):
            if getattr(self, key) is not None:
                _at_least(getattr(self, key), 1, f"trainer.{key}")


# --------------------------------------------------------------------------- top level


# Numeric keys of summary.json (engine.summarize) that a sweep can optimise.
OBJECTIVES = ("best_val_acc1", "final_val_acc1", "final_val_acc5", "final_val_ece", "final_val_nll",
              "best_ema_val_acc1", "final_ema_val_acc1", "final_ema_val_ece", "final_ema_val_nll",
              "final_train_loss", "img_per_s", "wall_time_s")


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    augment: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    resume: Optional[str] = None  # a checkpoint file or a run dir to continue
    # The summary value `mixtrain train` returns to Hydra, so a sweeper (e.g. Optuna)
    # optimises it; pick the sweeper's direction to match (accuracies up, ECE/NLL down).
    objective: str = "best_val_acc1"

    def __post_init__(self) -> None:
        _at_least(self.seed, 0, "seed")
        _choice(self.objective, OBJECTIVES, "objective")
        if isinstance(self.augment, AugmentConfig):
            _require(self.augment.disable_epochs <= self.trainer.epochs, "augment.disable_epochs",
                     f"must be <= trainer.epochs ({self.trainer.epochs})", self.augment.disable_epochs)
        if isinstance(self.augment, ManifoldConfig):
            self._check_manifold()
            _require(self.trainer.accum_steps == 1, "trainer.accum_steps",
                     "must be 1 with augment=manifold (it mixes inside the forward pass, so the batch cannot be "
                     "mixed whole and then split)", self.trainer.accum_steps)
        if isinstance(self.sched, MultiStepConfig):
            _require(all(m < self.trainer.epochs for m in self.sched.milestones), "sched.milestones",
                     f"must be < trainer.epochs ({self.trainer.epochs})", self.sched.milestones)
        _require(self.sched.warmup_epochs < self.trainer.epochs or self.sched.warmup_epochs == 0,
                 "sched.warmup_epochs", f"must be < trainer.epochs ({self.trainer.epochs})", self.sched.warmup_epochs)


    def _check_manifold(self) -> None:
        if not isinstance(self.model, CifarModelConfig):
            raise MixtrainError(
                f"augment=manifold mixes hidden states between stages, and model=timm ({self.model.name}) does not "
                f"expose stages: use one of {', '.join(CIFAR_MODELS)}"
            )
        stages = CIFAR_MODEL_STAGES[self.model.name]
        _require(max(self.augment.layers) <= stages, "augment.layers",
                 f"must be in 0..{stages} for {self.model.name} ({stages} stages)", self.augment.layers)
        _require(not self.trainer.compile, "trainer.compile",
                 "must be false with augment=manifold (its per-step hook would recompile the model)", True)


# --------------------------------------------------------------------------- eval


@dataclass
class EvalConfig:
    """``mixtrain eval``: calibration, temperature scaling and FGSM robustness of a checkpoint."""

    checkpoint: str = MISSING  # a .pt file, or a run dir (its best.pt, else last.pt)
    # None: the checkpoint's own dataset; `dataset.key=value` changes keys of it, and
    # `dataset=NAME` (another dataset) starts from that option's defaults.
    dataset: Any = None
    # Data for fitting the temperature: a fraction in (0, 1) of the validation set (a
    # fixed split drawn from `seed`; the rest reports), or a split name: `train`, or a
    # folder under dataset.root for dataset=imagefolder (the whole validation set reports).
    heldout: str = "0.5"
    # FGSM epsilons in pixel levels of 1/255, on [0, 1] images before normalization;
    # [] skips the attack.
    fgsm_eps: List[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # the held-out split
    weights: str = "raw"  # raw: the trained weights | ema: the EMA weights (runs with trainer.ema.enabled)
    # Bootstrap resamples of the evaluated images for the 95% intervals (0: none), drawn from `seed`.
    bootstrap: int = 1000
    # Store the fitted temperature with the model: calibration.json beside the checkpoint, which
    # `mixtrain predict` and `mixtrain export` read.
    calibrate: bool = False
    tta: str = "none"  # none | flip: average the softmax of each image and its mirror image

    def __post_init__(self) -> None:
        _choice(self.weights, ("raw", "ema"), "weights")
        _at_least(self.bootstrap, 0, "bootstrap")
        _choice(self.tta, ("none", "flip"), "tta")
        path = Path(os.path.expanduser(self.checkpoint))
        _require(path.exists(), "checkpoint", "does not exist: pass a .pt file or a run dir", self.checkpoint)
        fraction = heldout_fraction(self.heldout)
        if fraction is not None:
            _require(0.0 < fraction < 1.0, "heldout", "must be a fraction in (0, 1) or a split name", self.heldout)
        else:
            _require(self.heldout not in ("", "val"), "heldout",
                     "must be a fraction of the validation set or another split (train, or a folder name)", self.heldout)
        _require(all(0.0 <= e <= 255.0 for e in self.fgsm_eps), "fgsm_eps",
                 "must be pixel levels in [0, 255] (8 means 8/255)", list(self.fgsm_eps))
        _at_least(self.batch_size, 1, "batch_size")
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                 "device", "must be auto, cpu, cuda or cuda:N", self.device)
        _at_least(self.seed, 0, "seed")


@dataclass
class PredictConfig:
    """``mixtrain predict``: classify new images with a trained model."""

    checkpoint: str = MISSING  # a .pt file, or a run dir (its best.pt, else last.pt)
    inputs: str = MISSING  # an image, a folder (recursive), a glob, or a text file of paths
    out: str = "preds.csv"  # .csv, or .jsonl for JSON lines; unreadable files go to <out>_errors.csv
    topk: int = 5
    calibrated: Optional[bool] = None  # None: true when the checkpoint has a calibration.json
    tta: str = "none"  # none | flip: average the softmax of each image and its mirror image
    batch_size: int = 64
    device: str = "auto"
    num_workers: Any = "auto"
    weights: str = "raw"  # raw | ema
    overwrite: bool = False

    def __post_init__(self) -> None:
        _at_least(self.topk, 1, "topk")
        _choice(self.tta, ("none", "flip"), "tta")
        _at_least(self.batch_size, 1, "batch_size")
        _choice(self.weights, ("raw", "ema"), "weights")
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                 "device", "must be auto, cpu, cuda or cuda:N", self.device)


@dataclass
class ExportConfig:
    """``mixtrain export``: the model in a format other tools load."""

    checkpoint: str = MISSING
    format: str = "safetensors"  # safetensors | onnx | torchscript
    out: Optional[str] = None  # a directory; default: export-<format> beside the checkpoint
    weights: str = "raw"  # raw | ema
    opset: Optional[int] = None  # ONNX opset; None: the exporter's default for the installed torch
    overwrite: bool = False

    def __post_init__(self) -> None:
        _choice(self.format, ("safetensors", "onnx", "torchscript"), "format")
        _choice(self.weights, ("raw", "ema"), "weights")


def heldout_fraction(heldout: str) -> Optional[float]:
    """``EvalConfig.heldout`` as a fraction, or None when it names a split."""
    try:
        return float(heldout)
    except ValueError:
        return None


SCHEMAS = {
    "dataset": {"cifar": CifarConfig, "mini": MiniConfig, "folder": FolderConfig},
    "model": {"cifar": CifarModelConfig, "timm": TimmModelConfig},
    "augment": {"none": AugmentConfig, "mixup": MixupConfig, "cutmix": CutmixConfig, "switch": SwitchConfig,
                "manifold": ManifoldConfig, "regmixup": RegMixupConfig},
    "optim": {"sgd": SGDConfig, "adamw": AdamWConfig, "lamb": LambConfig},
    "sched": {"cosine": CosineConfig, "multistep": MultiStepConfig},
}


def schema_for(group: str, name: str) -> type:
    """The schema class of a group option with this ``name`` (as saved in a run's config)."""
    if group == "model":
        return CifarModelConfig if name in CIFAR_MODELS else TimmModelConfig
    if group == "dataset" and name in ("cifar10", "cifar100"):
        return CifarConfig
    for schema in SCHEMAS[group].values():
        if schema.name == name:
            return schema
    raise MixtrainError(f"unknown {group} {name!r} in a saved config: choose one of "
                        f"{', '.join(s.name for s in SCHEMAS[group].values() if s.name != MISSING)}")


def config_from_dict(saved: Dict[str, Any]) -> "TrainConfig":
    """Rebuild (and re-validate) a TrainConfig from its ``asdict`` form, e.g. a checkpoint's."""
    nodes = {}
    for group in SCHEMAS:
        schema = schema_for(group, saved[group]["name"])
        nodes[group] = OmegaConf.merge(OmegaConf.structured(schema), saved[group])
    top = OmegaConf.merge(OmegaConf.structured(TrainConfig), {k: v for k, v in saved.items() if k not in SCHEMAS})
    for group, node in nodes.items():
        top[group] = node
    return to_object(top)


def register_configs() -> None:
    """Put the schemas and the recipes in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict", node=PredictConfig)
    cs.store(name="export", node=ExportConfig)
    for group, kinds in SCHEMAS.items():
        for kind, schema in kinds.items():
            cs.store(group=f"schema/{group}", name=kind, node=schema)
    # recipes/ sits beside conf/, not inside it, so Hydra would not see it as the
    # `recipe` group; registering each file keeps `recipe=NAME` working (no `+`).
    for path in sorted(recipes_dir().glob("*.yaml")):
        cs.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


# --------------------------------------------------------------------------- errors


def to_object(cfg: DictConfig) -> Any:
    """Resolve and validate a composed config; return the dataclass tree."""
    check_no_extra_keys(cfg)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as ex:
        raise MixtrainError(describe_config_error(ex, cfg)) from None


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    keys = []
    for k in cfg.keys():
        node = cfg._get_node(k)
        if isinstance(node, DictConfig):
            keys.extend(_leaf_keys(node, f"{prefix}{k}."))
        else:
            keys.append(f"{prefix}{k}")
    return keys


def _unknown_key(key: str, cfg: Optional[DictConfig]) -> str:
    """'unknown config key' plus the likeliest fix: a near name beside it, or the same name elsewhere."""
    message = f"unknown config key '{key}'"
    if cfg is None:
        return message
    parent, _, leaf = key.rpartition(".")
    keys = [k for k in _leaf_keys(cfg) if k != key]
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.7)
    if close:
        return f"{message}; did you mean {parent + '.' if parent else ''}{close[0]}?"
    elsewhere = [k for k in keys if k.rpartition(".")[2] == leaf]
    if elsewhere:
        return f"{message}; did you mean {elsewhere[0]}?"
    owners = [f"{parent}={schema.name}" for schema in SCHEMAS.get(parent, {}).values()
              if leaf in {f.name for f in dataclasses.fields(schema)} and schema.name != MISSING]
    if owners:
        return f"{message}: it belongs to {' / '.join(owners)}"
    if siblings:
        return f"{message} ({parent or 'the top level'} has: {', '.join(siblings)})"
    return message


def check_no_extra_keys(cfg: DictConfig, root: Optional[DictConfig] = None, prefix: str = "") -> None:
    """Reject keys that a schema does not declare (``+key=value`` gets past Hydra's struct mode)."""
    root = cfg if root is None else root
    schema = OmegaConf.get_type(cfg)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for k in cfg.keys():
        if declared is not None and k not in declared:
            raise MixtrainError(_unknown_key(f"{prefix}{k}", root))
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            check_no_extra_keys(node, root, f"{prefix}{k}.")


def describe_config_error(ex: BaseException, cfg: Optional[DictConfig] = None) -> str:
    """One line for a Hydra/OmegaConf composition error: the key, what is wrong, the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(ex, MissingConfigException) and ex.options is not None and ex.missing_cfg_file:
        group, _, name = str(ex.missing_cfg_file).rpartition("/")
        plugins = " (Hydra's launcher and sweeper plugins: pip install \"mixtrain[launchers]\")" if group.startswith("hydra/") else ""
        return f"unknown {group} '{name}': choose one of {', '.join(sorted(ex.options))}{plugins}"
    if isinstance(ex, OverrideParseException):
        return f"cannot parse override '{ex.override}': {ex.message.splitlines()[0]}"
    cause = ex
    while not isinstance(cause, OmegaConfBaseException) and cause.__cause__ is not None:
        cause = cause.__cause__
    first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
    if not isinstance(cause, OmegaConfBaseException):
        if "Could not override '" in first or "Could not append to config" in first:
            key = first.split("'")[1]
            return _unknown_key(key, cfg)
        return first
    key = cause.full_key or ""
    msg = (cause.msg or str(cause)).strip().splitlines()[0]
    kind = type(cause).__name__
    if kind in ("ConfigKeyError", "ConfigAttributeError") or "not in struct" in msg or "not in '" in msg:
        return _unknown_key(key, cfg)
    if kind == "MissingMandatoryValue":
        return f"{key} is required: pass {key}=..."
    return f"{key}: {msg}" if key else msg


def debug_enabled() -> bool:
    """Whether errors should keep their traceback (MIXTRAIN_DEBUG=1)."""
    return os.environ.get("MIXTRAIN_DEBUG", "") not in ("", "0")


def asdict(obj: Any) -> Dict[str, Any]:
    """A plain dict of a config object (dataclass tree), for JSON files and checkpoints."""
    return dataclasses.asdict(obj)
