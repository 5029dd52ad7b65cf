"""One split of a dataset, in order and unaugmented: what evaluation needs.

Training builds both splits through :func:`mixtrain.data.build_data`, with the training
split shuffled, augmented and (with ``dataset.label_noise``) relabelled. Evaluation
wants any split as it is on disk: the validation split, the training split (to fit a
temperature on it), or another folder of an ImageFolder dataset.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from mixtrain.config import CifarConfig, DatasetConfig, FolderConfig, MiniConfig
from mixtrain.data.device_loader import DeviceLoader
from mixtrain.data.folder import FolderLoader, decode_folder, eval_transform, open_split
from mixtrain.errors import MixtrainError

Loader = DeviceLoader | FolderLoader


def split_folder(cfg: DatasetConfig, split: str) -> str:
    """The folder (ImageFolder) or tensor set (CIFAR, bundled) that ``split`` names."""
    if split == "val":
        return cfg.val_split if isinstance(cfg, FolderConfig) else "val"
    if split == "train":
        return cfg.train_split if isinstance(cfg, FolderConfig) else "train"
    if not isinstance(cfg, FolderConfig):
        raise MixtrainError(f"dataset {cfg.name} has only the splits train and val (got {split!r}): "
                            "use heldout=train, or a fraction such as heldout=0.5")
    return split


def eval_loader(cfg: DatasetConfig, split: str, batch_size: int, device: torch.device,
                channels_last: bool = False, num_workers: int = 0) -> Tuple[Loader, List[str]]:
    """``(loader, classes)`` over every sample of ``split`` ("train", "val" or a folder name), in order."""
    common = dict(mean=cfg.mean, std=cfg.std, channels_last=channels_last, train=False)
    if isinstance(cfg, FolderConfig):
        folder = split_folder(cfg, split)
        key = {cfg.train_split: "dataset.train_split", cfg.val_split: "dataset.val_split"}.get(folder, "heldout")
        if cfg.cache:
            dataset = open_split(cfg.root, folder, key, train=False)
            images, labels, _ = decode_folder(dataset, cfg.image_size)  # unreadable files are left out
            return DeviceLoader(images.to(device), labels.to(device), batch_size, **common), list(dataset.classes)
        dataset = open_split(cfg.root, folder, key, eval_transform(cfg.image_size, cfg.crop_pct), train=False)
        loader = FolderLoader(dataset, batch_size, device=device, num_workers=num_workers, seed=0, **common)
        return loader, list(dataset.classes)

    split_folder(cfg, split)
    if isinstance(cfg, MiniConfig):
        from mixtrain.data.mini import load_mini
        train_x, train_y, val_x, val_y, classes = load_mini()
    elif isinstance(cfg, CifarConfig):
        from mixtrain.data.cifar import load_cifar
        train_x, train_y, val_x, val_y, classes = load_cifar(cfg.name, cfg.root, cfg.download)
    else:
        raise MixtrainError(f"dataset {cfg.name!r} cannot be evaluated: use cifar10, cifar100, cifar10_mini or imagefolder")
    images, labels = (train_x, train_y) if split == "train" else (val_x, val_y)
    return DeviceLoader(images.to(device), labels.to(device), batch_size, **common), classes
