"""The streaming path's transforms: timm's ``create_transform``, whole, with the dataset's keys.

PIL image in, uint8 ``[3, S, S]`` out (timm's prefetcher form: normalization happens on the device,
as mixtrain's loaders do it, and random erasing there too, batched). Training: timm's
RandomResizedCrop with its interpolation, flips, colour jitter or an auto-augment policy;
evaluation: resize to ``floor(size / crop_pct)`` and crop (``crop_mode``), as timm evaluates.
timm's transforms draw from Python's ``random`` and from torch; :func:`mixtrain.data.streaming.seeded`
seeds both for each sample.
"""

from __future__ import annotations

from typing import Any, Dict

from PIL import Image, ImageOps
from timm.data import create_transform
from torchvision.transforms import v2

from mixtrain.config.dataset import StreamedConfig
from mixtrain.errors import MixtrainError


def transform_kwargs(cfg: StreamedConfig, train: bool) -> Dict[str, Any]:
    """``timm.data.create_transform``'s arguments for this dataset's training or evaluation images."""
    common = dict(mean=tuple(cfg.mean), std=tuple(cfg.std), use_prefetcher=True)
    if not train:
        return dict(input_size=cfg.size(False), is_training=False, interpolation=cfg.interpolation,
                    crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode, **common)
    return dict(input_size=cfg.size(True), is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter or None,
                color_jitter_prob=cfg.color_jitter_prob, grayscale_prob=cfg.grayscale_prob,
                gaussian_blur_prob=cfg.gaussian_blur_prob, auto_augment=cfg.auto_augment,
                interpolation=cfg.train_interpolation or cfg.interpolation, **common)


def stream_transform(cfg: StreamedConfig, train: bool):
    """The streaming path's transform: timm's, augmenting to train, resize and crop otherwise."""
    if not cfg.resolved:  # a bug: open_split and TrainConfig resolve them
        raise ValueError("the dataset's preprocessing keys are not resolved (StreamedConfig.resolve_preprocessing)")
    try:
        transform = create_transform(**transform_kwargs(cfg, train))
    except (AssertionError, KeyError, ValueError, IndexError) as ex:
        if train and cfg.auto_augment:
            raise MixtrainError(f"dataset.auto_augment={cfg.auto_augment!r} is not a timm policy string "
                                f"({ex or type(ex).__name__}): use e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2 or "
                                "original") from None
        raise
    for op in augment_ops(transform):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_at_least_one_bit
    return transform


def square_resize(size: int, interpolation: str = "bilinear") -> v2.Resize:
    """A resize to ``size`` x ``size`` (aspect ratio not kept) of a uint8 tensor or a PIL image: how the
    cached path stores its images, and how images held on the device are read to evaluate."""
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        raise MixtrainError(f"dataset.interpolation={interpolation!r} resizes PIL images only, and "
                            "dataset.cache=true resizes tensors: use nearest, bilinear or bicubic")
    return v2.Resize((size, size), interpolation=v2.InterpolationMode(interpolation), antialias=True)


def augment_ops(transform):
    """The operations of the auto-augment policy inside a composed timm transform (RandAugment and AugMix
    hold ``ops``, AutoAugment sub-policies of them)."""
    for step in getattr(transform, "transforms", []):
        yield from getattr(step, "ops", [])
        for sub in getattr(step, "policy", []):
            yield from sub


def posterize_at_least_one_bit(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits read as 1: timm asks for 0 bits at the ends of the
    magnitude range (PosterizeIncreasing at magnitude 10, Posterize near 0, both reached with
    magnitude noise), which Pillow >= 11 refuses with a ValueError mid-epoch."""

    return image if bits_to_keep >= 8 else ImageOps.posterize(image, max(1, int(bits_to_keep)))
