"""The streaming path's transforms: PIL image in, uint8 ``[3, S, S]`` out (normalized later, on the device)."""

from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image, ImageOps
from torchvision.transforms import v2

from mixtrain.config.dataset import StreamedConfig
from mixtrain.errors import MixtrainError


def train_transform(image_size: int, scale: Sequence[float], auto_augment: Optional[str] = None,
                    mean: Sequence[float] = (0.485, 0.456, 0.406)) -> v2.Compose:
    steps = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip()]
    if auto_augment:
        steps.append(auto_augment_transform(auto_augment, image_size, mean))
    return v2.Compose([*steps, v2.PILToTensor()])


def auto_augment_transform(policy: str, image_size: int, mean: Sequence[float]):
    """timm's RandAugment / AugMix / AutoAugment on PIL images, with the hparams of timm's create_transform."""
    # timm imports its model registry (0.6 s over torchvision): only when a policy is asked for.
    from timm.data.auto_augment import (augment_and_mix_transform, auto_augment_transform as timm_auto_augment,
                                        rand_augment_transform)

    hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean))
    if policy.startswith("augmix"):
        hparams["translate_pct"] = 0.3
    make = (rand_augment_transform if policy.startswith("rand")
            else augment_and_mix_transform if policy.startswith("augmix") else timm_auto_augment)
    try:
        transform = make(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as ex:
        raise MixtrainError(f"dataset.auto_augment={policy!r} is not a timm policy string ({ex or type(ex).__name__}): "
                            f"use e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2 or original") from None
    for op in [*getattr(transform, "ops", []), *(op for sub in getattr(transform, "policy", []) for op in sub)]:
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_at_least_one_bit
    return transform


def posterize_at_least_one_bit(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits read as 1: timm asks for 0 bits at the ends of the
    magnitude range (PosterizeIncreasing at magnitude 10, Posterize near 0, both reached with
    magnitude noise), which Pillow >= 11 refuses with a ValueError mid-epoch."""

    return image if bits_to_keep >= 8 else ImageOps.posterize(image, max(1, int(bits_to_keep)))


def eval_transform(image_size: int, crop_pct: float) -> v2.Compose:
    return v2.Compose([
        v2.Resize(int(round(image_size / crop_pct)), antialias=True),
        v2.CenterCrop(image_size),
        v2.PILToTensor(),
    ])


def stream_transform(cfg: StreamedConfig, train: bool):
    """The streaming path's transform: augmentation to train, resize + center crop otherwise."""
    if train:
        return train_transform(cfg.image_size, cfg.scale, cfg.auto_augment, cfg.mean)
    return eval_transform(cfg.size(train), cfg.crop_pct)
