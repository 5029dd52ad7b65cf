"""CIFAR-10/100 through torchvision's dataset classes, held on the device as uint8."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torchvision import datasets

from mixtrain.config.dataset import DatasetConfig
from mixtrain.config.errors import choice
from mixtrain.data.source import LoaderOptions, Split, device_split, register_source
from mixtrain.errors import MixtrainError


@dataclass
class CifarConfig(DatasetConfig):
    """CIFAR-10/100 in torchvision's on-disk format (``<root>/cifar-10-batches-py``)."""

    # torchvision's CIFAR files; null: $MIXTRAIN_DATA, else ~/.cache/mixtrain/data
    root: str = "${oc.env:MIXTRAIN_DATA,'~/.cache/mixtrain/data'}"
    download: bool = True  # download the archive when it is not under root

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.name, tuple(ARCHIVES), "dataset.name")


ARCHIVES = {
    "cifar10": (datasets.CIFAR10, "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": (datasets.CIFAR100, "cifar-100-python.tar.gz", "cifar-100-python"),
}


def load_cifar(name: str, root: str, download: bool, train: bool) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """``(images, labels, classes)`` of the train split, or of the test split (mixtrain's val)."""
    cls, archive, folder = ARCHIVES[name]
    root = os.path.expanduser(root)
    try:
        ds = cls(root, train=train, download=download)
    except Exception as ex:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
        raise MixtrainError(
            f"{name} is not in {os.path.join(root, folder)} ({reason}). Put {archive} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html extracted in {root}, or point "
            f"dataset.root (or MIXTRAIN_DATA) at the folder that holds {folder}/"
        ) from None
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), list(ds.classes)


def open_cifar(cfg: CifarConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    images, labels, classes = load_cifar(cfg.name, cfg.root, cfg.download, train=cfg.split_name(split) == "train")
    return device_split(cfg, images, labels, classes, train, options)


register_source("cifar", CifarConfig, open_cifar, names=tuple(ARCHIVES))
