"""The real CIFAR-10 subset shipped inside the package (built by scripts/build_mini.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from mixtrain.config.dataset import DatasetConfig
from mixtrain.data.source import LoaderOptions, Split, device_split, register_source

MINI_PATH = Path(__file__).resolve().parent / "cifar10_mini.npz"


@dataclass
class MiniConfig(DatasetConfig):
    """The real CIFAR-10 subset shipped inside the package (the offline default)."""

    name: str = "cifar10_mini"
    num_classes: Optional[int] = 10  # 10: the bundled set's classes


def decode_jpeg_blobs(data: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """Concatenated JPEG bytes + offsets -> uint8 ``[N, 3, H, W]`` (one batched decode call)."""
    buf = torch.from_numpy(data)
    blobs = [buf[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB))


def load_mini(split: str) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """``(images, labels, classes)`` of the ``train`` or ``val`` split, on the CPU."""
    with np.load(MINI_PATH) as z:
        images = decode_jpeg_blobs(z[f"{split}_jpeg"], z[f"{split}_offsets"])
        return images, torch.from_numpy(z[f"{split}_labels"]), [str(c) for c in z["classes"]]


def open_mini(cfg: MiniConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    return device_split(cfg, *load_mini(cfg.split_name(split)), train, options)


def mini_classes() -> List[str]:
    with np.load(MINI_PATH) as z:
        return [str(c) for c in z["classes"]]


register_source("mini", MiniConfig, open_mini, names=("cifar10_mini",))
