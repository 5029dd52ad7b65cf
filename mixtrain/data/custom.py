"""A user's own ``Dataset``, named by ``_target_``: ``dataset=custom dataset._target_=my_pkg.Flowers``.

The class is called as ``Flowers(split=SPLIT, **kwargs)`` for ``train``, ``val`` (and any other
split ``mixtrain eval heldout=`` names). Its items are ``(image, label)``: the image a PIL image,
a path, or a uint8 array / tensor (HWC or CHW); it has ``classes`` (the class names, label order).
It streams as a folder does: the same transforms, per-sample seeds (exact resume), workers, and
unreadable samples counted, named and left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np
import torch
from omegaconf import MISSING
from PIL import Image

from mixtrain.config.dataset import StreamedConfig
from mixtrain.config.errors import require
from mixtrain.config.store import import_target
from mixtrain.data.images import load_rgb, to_rgb
from mixtrain.data.streaming import CheckedItems, stream_split
from mixtrain.data.transforms import stream_transform
from mixtrain.data.source import LoaderOptions, Split, register_source
from mixtrain.errors import MixtrainError


@dataclass
class CustomDatasetConfig(StreamedConfig):
    """Your own Dataset: its class by `_target_`, built as cls(split=SPLIT, **kwargs); items (image, label)."""

    name: str = "custom"  # how reports and logs name it
    _target_: str = MISSING  # the class, as a dotted path: my_pkg.data.Flowers
    kwargs: Dict[str, Any] = field(default_factory=dict)  # arguments for the class named by _target_

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.label_noise == 0, "dataset.label_noise", "is not supported with dataset=custom (its labels are "
                "only known item by item)", self.label_noise)

    def split_name(self, split: str) -> str:
        return split


def as_image(image: Any) -> Image.Image:
    """A PIL RGB image from what a user's Dataset returns: a PIL image, a path, a uint8 array or tensor."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, str):
        return load_rgb(image)
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.dtype != np.uint8:
        raise ValueError(f"an image array of {array.dtype}: return uint8 pixels")
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array).convert("RGB")


class CustomItems(CheckedItems):
    def __init__(self, dataset: Any, target: str, transform, train: bool) -> None:
        self.dataset, self.target, self.transform, self.train = dataset, target, transform, train
        self.classes = [str(c) for c in dataset.classes]

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> Tuple[Image.Image, int]:
        image, label = self.dataset[index]
        return as_image(image), int(label)

    def name(self, index: int) -> str:
        return f"{self.target}[{index}]"


def open_custom(cfg: CustomDatasetConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    cls = import_target("dataset._target_", cfg._target_, "my_pkg.data.Flowers")
    try:
        dataset = cls(split=cfg.split_name(split), **cfg.kwargs)
    except TypeError as ex:
        raise MixtrainError(f"{cfg._target_}(split={split!r}, **dataset.kwargs) failed: {ex}") from None
    if not hasattr(dataset, "classes") or len(dataset) == 0:
        raise MixtrainError(f"{cfg._target_}(split={split!r}) must have `classes` (the class names) and samples")
    return stream_split(cfg, CustomItems(dataset, cfg._target_, stream_transform(cfg, train), train), train, options)


register_source("custom", CustomDatasetConfig, open_custom, names=())
