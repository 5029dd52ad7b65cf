"""Data: every source ends as a loader of normalized ``(images, labels)`` batches on the device."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Union

import torch

from mixtrain.config import CifarConfig, DatasetConfig, FolderConfig, MiniConfig, TrainerConfig
from mixtrain.data.device_loader import DeviceLoader
from mixtrain.data.folder import (FolderLoader, bad_image_error, check_same_classes, decode_folder, eval_transform,
                                  open_split, train_transform, unreadable_files)
from mixtrain.data.label_noise import corrupt_folder_labels, corrupt_labels

Loader = Union[DeviceLoader, FolderLoader]


@dataclass
class Data:
    train: Loader
    val: Loader
    classes: List[str]
    skipped: List[str] = field(default_factory=list)  # unreadable files left out when caching
    labels_changed: int = 0  # training labels moved to another class by dataset.label_noise

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def unreadable(self) -> List[str]:
        """Unreadable files skipped so far (when caching, or served around by the loaders)."""
        seen = set(self.skipped)
        for loader in (self.train, self.val):
            seen |= getattr(loader, "unreadable", set())
        return sorted(seen)


def build_data(cfg: DatasetConfig, trainer: TrainerConfig, device: torch.device, seed: int,
               rank: int = 0, world_size: int = 1) -> Data:
    """Train and val loaders for ``cfg`` on ``device`` (this rank's share under DDP).

    ``trainer.batch_size`` and ``trainer.eval_batch_size`` are global: each of
    ``world_size`` processes takes an equal part.
    """
    trainer = dataclasses.replace(trainer, batch_size=trainer.batch_size // world_size,
                                  eval_batch_size=trainer.eval_batch_size // world_size)
    if isinstance(cfg, FolderConfig) and not cfg.cache:
        return _streaming_folder(cfg, trainer, device, seed, rank, world_size)

    if isinstance(cfg, MiniConfig):
        from mixtrain.data.mini import load_mini
        train_x, train_y, val_x, val_y, classes = load_mini()
    elif isinstance(cfg, CifarConfig):
        from mixtrain.data.cifar import load_cifar
        train_x, train_y, val_x, val_y, classes = load_cifar(cfg.name, cfg.root, cfg.download)
    else:
        train_ds = open_split(cfg.root, cfg.train_split, "dataset.train_split")
        val_ds = open_split(cfg.root, cfg.val_split, "dataset.val_split")
        check_same_classes(train_ds, val_ds)
        train_x, train_y, bad_train = decode_folder(train_ds, cfg.image_size)
        val_x, val_y, bad_val = decode_folder(val_ds, cfg.eval_image_size or cfg.image_size)
        skipped = bad_train + bad_val
        if skipped and cfg.on_bad_image == "error":
            raise bad_image_error(skipped)
        classes = list(train_ds.classes)
    train_y, changed = corrupt_labels(train_y, cfg.label_noise, len(classes), seed)

    common = dict(mean=cfg.mean, std=cfg.std, channels_last=trainer.channels_last, seed=seed,
                  rank=rank, world_size=world_size)
    train = DeviceLoader(train_x.to(device), train_y.to(device), trainer.batch_size, train=True,
                         padding=cfg.crop_padding, max_batches=trainer.limit_train_batches, **common)
    val = DeviceLoader(val_x.to(device), val_y.to(device), trainer.eval_batch_size, train=False,
                       max_batches=trainer.limit_val_batches, **common)
    return Data(train, val, classes, skipped if isinstance(cfg, FolderConfig) else [], labels_changed=changed)


def _streaming_folder(cfg: FolderConfig, trainer: TrainerConfig, device: torch.device, seed: int,
                      rank: int, world_size: int) -> Data:
    train_ds = open_split(cfg.root, cfg.train_split, "dataset.train_split",
                          train_transform(cfg.image_size, cfg.scale, cfg.auto_augment, cfg.mean))
    val_ds = open_split(cfg.root, cfg.val_split, "dataset.val_split",
                        eval_transform(cfg.eval_image_size or cfg.image_size, cfg.crop_pct), train=False)
    check_same_classes(train_ds, val_ds)
    if cfg.on_bad_image == "error":  # a full decoding pass, so the run stops before training
        bad = unreadable_files(train_ds) + unreadable_files(val_ds)
        if bad:
            raise bad_image_error(bad)
    changed = corrupt_folder_labels(train_ds, cfg.label_noise, seed)
    common = dict(device=device, mean=cfg.mean, std=cfg.std, num_workers=trainer.num_workers,
                  channels_last=trainer.channels_last, seed=seed, rank=rank, world_size=world_size)
    train = FolderLoader(train_ds, trainer.batch_size, train=True, max_batches=trainer.limit_train_batches, **common)
    val = FolderLoader(val_ds, trainer.eval_batch_size, train=False, max_batches=trainer.limit_val_batches, **common)
    return Data(train, val, list(train_ds.classes), labels_changed=changed)
