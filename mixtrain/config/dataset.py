"""The bases of every dataset schema: what all sources have, and what every source that decodes
images as it trains has. Each source's own schema lives in its module under ``mixtrain/data/``
(its registry entry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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
    hflip: float = 0.5  # probability of a horizontal flip of a training image (timm's --hflip)
    vflip: float = 0.0  # probability of a vertical flip of a training image (timm's --vflip)

    def __post_init__(self) -> None:
        if self.num_classes is not None:
            at_least(self.num_classes, 2, "dataset.num_classes")
        for key in ("mean", "std"):  # a streamed source's null takes the model's (resolve_preprocessing)
            value = getattr(self, key)
            if value is not None:
                require(len(value) == 3, f"dataset.{key}", "needs 3 values (R, G, B)", value)
        if self.std is not None:
            require(all(s > 0 for s in self.std), "dataset.std", "must be positive", self.std)
        at_least(self.crop_padding, 0, "dataset.crop_padding")
        require(0.0 <= self.label_noise < 1.0, "dataset.label_noise", "must be in [0, 1)", self.label_noise)
        probability(self.random_erasing, "dataset.random_erasing")
        choice(self.random_erasing_mode, ("const", "rand", "pixel"), "dataset.random_erasing_mode")
        at_least(self.random_erasing_count, 1, "dataset.random_erasing_count")
        at_least(self.repeated_aug, 1, "dataset.repeated_aug")
        probability(self.hflip, "dataset.hflip")
        probability(self.vflip, "dataset.vflip")

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
# timm's interpolation names (timm.data.transforms: str_to_pil_interp); `random` only to train.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")  # timm's eval crop modes (transforms_imagenet_eval)
# The preprocessing keys left null take the model's own (timm's pretrained config) or else these.
PREPROCESSING_DEFAULTS = {"image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                          "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center"}


@dataclass
class StreamedConfig(DatasetConfig):
    """Keys of every source that decodes its images as it trains: timm's create_transform, whole.

    The preprocessing keys (``image_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
    ``crop_mode``) left null come from the model's pretrained config (timm's ``resolve_data_config``:
    ``model=timm``), else from :data:`PREPROCESSING_DEFAULTS` (ImageNet's statistics, bilinear, 0.875,
    224 px). The run's first line says which came from where; the checkpoint and ``mixtrain export``
    keep the values used.
    """

    image_size: Optional[int] = None  # train crop, and eval size unless eval_image_size is set; null: the model's (224)
    # Eval size when it differs from training, e.g. ResNet Strikes Back A3 trains at 160
    # and tests at 224 (Touvron et al. 2019: a larger test size offsets the train/test
    # apparent-object-size gap of RandomResizedCrop).
    eval_image_size: Optional[int] = None
    crop_pct: Optional[float] = None  # eval: resize to floor(eval size / crop_pct), then crop; null: the model's (0.875)
    crop_mode: Optional[str] = None  # eval crop: center | squash | border (timm's); null: the model's (center)
    # Resizing: nearest | bilinear | bicubic | box | hamming | lanczos; null: the model's (bilinear)
    interpolation: Optional[str] = None
    train_interpolation: Optional[str] = None  # the training crop's, incl. random (bilinear or bicubic); null: interpolation
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # RandomResizedCrop aspect-ratio range
    # Colour jitter strength for brightness, contrast and saturation (timm's --color-jitter; off when
    # auto_augment is set, as in timm); null or 0: off.
    color_jitter: Optional[float] = 0.4
    color_jitter_prob: Optional[float] = None  # apply colour jitter with this probability; null: always
    grayscale_prob: float = 0.0  # probability of turning a training image grey (timm's --grayscale-prob)
    gaussian_blur_prob: float = 0.0  # probability of a Gaussian blur (timm's --gaussian-blur-prob)
    # timm's policy string for training images, applied after the crop and flip as in timm's
    # create_transform: rand-m6-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, original / v0
    # (AutoAugment). None: crop, flip and colour jitter only.
    auto_augment: Optional[str] = None
    # An unreadable image: skip it (warn once) | error (stop before training, listing them).
    on_bad_image: str = "skip"
    # per-channel mean of the normalization; null: the model's (ImageNet's)
    mean: Optional[List[float]] = None
    # per-channel std of the normalization; null: the model's (ImageNet's)
    std: Optional[List[float]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size is not None:
            at_least(self.image_size, 8, "dataset.image_size")
        if self.eval_image_size is not None:
            at_least(self.eval_image_size, 8, "dataset.eval_image_size")
        if self.auto_augment is not None:
            require(self.auto_augment.split("-")[0] in AUTO_AUGMENT_POLICIES, "dataset.auto_augment",
                    f"must start with one of {', '.join(AUTO_AUGMENT_POLICIES)} (timm's policy strings)",
                    self.auto_augment)
        if self.crop_pct is not None:
            require(0.0 < self.crop_pct <= 1.0, "dataset.crop_pct", "must be in (0, 1]", self.crop_pct)
        if self.crop_mode is not None:
            choice(self.crop_mode, CROP_MODES, "dataset.crop_mode")
        if self.interpolation is not None:
            choice(self.interpolation, INTERPOLATIONS, "dataset.interpolation")
        if self.train_interpolation is not None:
            choice(self.train_interpolation, (*INTERPOLATIONS, "random"), "dataset.train_interpolation")
        require(len(self.scale) == 2 and 0.0 < self.scale[0] <= self.scale[1] <= 1.0,
                "dataset.scale", "must be [min, max] with 0 < min <= max <= 1", self.scale)
        require(len(self.ratio) == 2 and 0.0 < self.ratio[0] <= self.ratio[1], "dataset.ratio",
                "must be [min, max] with 0 < min <= max", self.ratio)
        if self.color_jitter is not None:
            at_least(self.color_jitter, 0.0, "dataset.color_jitter")
        for key in ("color_jitter_prob", "grayscale_prob", "gaussian_blur_prob"):
            if getattr(self, key) is not None:
                probability(getattr(self, key), f"dataset.{key}")
        choice(self.on_bad_image, ("skip", "error"), "dataset.on_bad_image")

    def resolve_preprocessing(self, model_config: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
        """Fill the preprocessing keys left null, in place; return where each value came from (``set``,
        ``model`` or ``default``). ``model_config``: the model's pretrained config (timm's), whose values
        timm's own ``resolve_data_config`` merges under the ones set here."""
        given = {key: getattr(self, key) for key in PREPROCESSING_DEFAULTS if getattr(self, key) is not None}
        values = dict(PREPROCESSING_DEFAULTS)
        if model_config:
            from timm.data import resolve_data_config  # only with a timm model, which imported timm already

            args = {"img_size": given.get("image_size"), **{k: v for k, v in given.items() if k != "image_size"}}
            timm_values = resolve_data_config(args, pretrained_cfg=model_config)
            values.update({k: timm_values[k] for k in ("interpolation", "crop_pct", "crop_mode") if k in timm_values},
                          mean=list(timm_values["mean"]), std=list(timm_values["std"]),
                          image_size=int(timm_values["input_size"][-1]))
        for key, value in {**values, **given}.items():
            setattr(self, key, list(value) if isinstance(value, (list, tuple)) else value)
        DatasetConfig.__post_init__(self)  # the filled values meet the same checks
        return {key: "set" if key in given else ("model" if model_config else "default") for key in values}

    @property
    def resolved(self) -> bool:
        """Whether every preprocessing key holds a value (:meth:`resolve_preprocessing` ran)."""
        return all(getattr(self, key) is not None for key in PREPROCESSING_DEFAULTS)

    def size(self, train: bool) -> Optional[int]:
        size = self.image_size or PREPROCESSING_DEFAULTS["image_size"]
        return size if train else (self.eval_image_size or size)

    @property
    def streams(self) -> bool:
        return True
