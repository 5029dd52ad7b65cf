"""CIFAR-10/100 through torchvision's dataset classes, as uint8 tensors."""

from __future__ import annotations

import os
from typing import List, Tuple

import torch
from torchvision import datasets

from mixtrain.errors import MixtrainError

ARCHIVES = {
    "cifar10": (datasets.CIFAR10, "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": (datasets.CIFAR100, "cifar-100-python.tar.gz", "cifar-100-python"),
}


def load_cifar(name: str, root: str, download: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[str]]:
    """``(train_images, train_labels, val_images, val_labels, classes)``; val is the test split."""
    cls, archive, folder = ARCHIVES[name]
    root = os.path.expanduser(root)
    where = os.path.join(root, folder)
    splits = []
    for train in (True, False):
        try:
            ds = cls(root, train=train, download=download and train)
        except Exception as ex:  # torchvision raises RuntimeError, URLError, OSError, ...
            reason = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            raise MixtrainError(
                f"{name} is not in {where} ({reason}). Put {archive} from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html extracted in {root}, or point "
                f"dataset.root (or MIXTRAIN_DATA) at the folder that holds {folder}/"
            ) from None
        splits += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)]
    return (*splits, list(ds.classes))
