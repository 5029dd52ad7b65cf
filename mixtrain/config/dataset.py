"""The bases of every dataset schema: what all sources have, and what every source that decodes
images as it trains has. Each source's own schema lives in its module under ``mixtrain/data/``
(its registry entry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from mixtrain.config.errors import at_least, choice, probability, require
from mixtrain.errors import MixtrainError


@dataclass
class DatasetConfig:
    name: str = MISSING
    num_classes: Optional[int] = None  # None: read from the data
    # Per-channel statistics in [0, 1] pixel units, applied on the training device.
    mean: List[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    # per-channel std of the normalization (CIFAR-10's by default)
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
            at_least(self.num_classes, 2, "dataset.num_classes")
        require(len(self.mean) == 3 and len(self.std) == 3, "dataset.mean/std", "need 3 values each", (self.mean, self.std))
        require(all(s > 0 for s in self.std), "dataset.std", "must be positive", self.std)
        at_least(self.crop_padding, 0, "dataset.crop_padding")
        require(0.0 <= self.label_noise < 1.0, "dataset.label_noise", "must be in [0, 1)", self.label_noise)
        probability(self.random_erasing, "dataset.random_erasing")
        choice(self.random_erasing_mode, ("const", "rand", "pixel"), "dataset.random_erasing_mode")
        at_least(self.random_erasing_count, 1, "dataset.random_erasing_count")
        at_least(self.repeated_aug, 1, "dataset.repeated_aug")

    # The source's own answers (overridden by the sources that have other splits or sizes).

    def split_name(self, split: str) -> str:
        """What this source calls a split (``train``, ``val``, or another split's name)."""
        if split in ("train", "val"):
            return split
        raise MixtrainError(f"dataset {self.name} has only the splits train and val (got {split!r}): "
                            "use heldout=train, or a fraction such as heldout=0.5")

    def size(self, train: bool) -> Optional[int]:
        """The side a split is read at; None: the images' own (CIFAR and the bundled set: 32 px)."""
        return None

    @property
    def streams(self) -> bool:
        """Whether images are decoded as batches are made (else held on the device)."""
        return False


# First field of timm's auto-augment policy strings (timm.data.auto_augment).
AUTO_AUGMENT_POLICIES = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a")


@dataclass
class StreamedConfig(DatasetConfig):
    """Keys of every source that decodes its images as it trains (timm's create_transform)."""

    image_size: int = 224  # train crop, and eval size unless eval_image_size is set
    # Eval size when it differs from training, e.g. ResNet Strikes Back A3 trains at 160
    # and tests at 224 (Touvron et al. 2019: a larger test size offsets the train/test
    # apparent-object-size gap of RandomResizedCrop).
    eval_image_size: Optional[int] = None
    crop_pct: float = 0.875  # eval: resize to eval size / crop_pct, then center crop
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    # timm's policy string for training images, applied after the crop and flip as in timm's
    # create_transform: rand-m6-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, original / v0
    # (AutoAugment). None: crop and flip only.
    auto_augment: Optional[str] = None
    # An unreadable image: skip it (warn once) | error (stop before training, listing them).
    on_bad_image: str = "skip"
    # per-channel mean of the normalization (ImageNet's by default)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    # per-channel std of the normalization (ImageNet's by default)
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.image_size, 8, "dataset.image_size")
        if self.eval_image_size is not None:
            at_least(self.eval_image_size, 8, "dataset.eval_image_size")
        if self.auto_augment is not None:
            require(self.auto_augment.split("-")[0] in AUTO_AUGMENT_POLICIES, "dataset.auto_augment",
                    f"must start with one of {', '.join(AUTO_AUGMENT_POLICIES)} (timm's policy strings)",
                    self.auto_augment)
        require(0.0 < self.crop_pct <= 1.0, "dataset.crop_pct", "must be in (0, 1]", self.crop_pct)
        require(len(self.scale) == 2 and 0.0 < self.scale[0] <= self.scale[1] <= 1.0,
                "dataset.scale", "must be [min, max] with 0 < min <= max <= 1", self.scale)
        choice(self.on_bad_image, ("skip", "error"), "dataset.on_bad_image")

    def size(self, train: bool) -> Optional[int]:
        return self.image_size if train else (self.eval_image_size or self.image_size)

    @property
    def streams(self) -> bool:
        return True
