"""Data: every split of every source opens through one factory, :func:`open_split`.

Training, ``mixtrain eval``, ``compare`` and ``preview`` all ask :func:`open_split` for
what they read, so the same split gives the same tensors everywhere: a number from
``mixtrain eval`` is the number training reported. A split ends as a loader of
normalized ``(images, labels)`` batches on the device: a
:class:`~mixtrain.data.device_loader.DeviceLoader` for small images held as uint8
(CIFAR, the bundled set, ``dataset.cache=true``), a
:class:`~mixtrain.data.folder.FolderLoader` streaming an ImageFolder otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch

from mixtrain.config import CifarConfig, DatasetConfig, FolderConfig, MiniConfig, TrainerConfig
from mixtrain.data.device_loader import DeviceLoader
from mixtrain.data.erasing import RandomErasing
from mixtrain.data.folder import (FolderLoader, bad_image_error, check_same_classes, decode_folder, eval_transform,
                                  open_image_folder, train_transform, unreadable_files)
from mixtrain.data.label_noise import corrupt_folder_labels, corrupt_labels
from mixtrain.errors import MixtrainError

Loader = Union[DeviceLoader, FolderLoader]


@dataclass(frozen=True)
class LoaderOptions:
    """How to iterate a split: this process's batch size, device, workers and shard."""

    batch_size: int
    device: torch.device = torch.device("cpu")
    num_workers: int = 0
    channels_last: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    max_batches: Optional[int] = None


@dataclass
class Split:
    loader: Loader
    classes: List[str]
    skipped: List[str] = field(default_factory=list)  # unreadable files found when opening (left out)
    labels_changed: int = 0  # training labels moved to another class by dataset.label_noise
    stored_size: Optional[int] = None  # cached folders: the longest side of any image as stored


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(num_workers) -> int:
    """``trainer.num_workers``: a count, or ``auto`` = min(8, the cores this process may use)."""
    return min(8, usable_cores()) if num_workers == "auto" else int(num_workers)


def split_folder(cfg: DatasetConfig, split: str) -> str:
    """The folder (ImageFolder) or tensor set (CIFAR, bundled) that ``split`` names."""
    if split in ("train", "val"):
        return getattr(cfg, f"{split}_split") if isinstance(cfg, FolderConfig) else split
    if not isinstance(cfg, FolderConfig):
        raise MixtrainError(f"dataset {cfg.name} has only the splits train and val (got {split!r}): "
                            "use heldout=train, or a fraction such as heldout=0.5")
    return split


def image_size(cfg: DatasetConfig, train: bool) -> Optional[int]:
    """The size a split is read at: ``image_size`` to train, ``eval_image_size or image_size`` otherwise."""
    if not isinstance(cfg, FolderConfig):
        return None  # CIFAR and the bundled set keep their 32 px
    return cfg.image_size if train else (cfg.eval_image_size or cfg.image_size)


def folder_transform(cfg: FolderConfig, train: bool):
    """The streaming path's transform: augmentation to train, resize + center crop otherwise."""
    if train:
        return train_transform(cfg.image_size, cfg.scale, cfg.auto_augment, cfg.mean)
    return eval_transform(image_size(cfg, train), cfg.crop_pct)


def eval_image_transform(cfg: DatasetConfig):
    """PIL image -> uint8 ``[3, S, S]`` as this dataset's evaluation reads its images: resize and
    center crop on the streaming folder path, a plain resize to S x S where images are cached
    (as :func:`~mixtrain.data.folder.decode_folder` does; CIFAR and the bundled set: 32 px)."""
    from torchvision.transforms import v2

    if isinstance(cfg, FolderConfig) and not cfg.cache:
        return folder_transform(cfg, train=False)
    size = image_size(cfg, False) or 32
    return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True)])


def _config_key(cfg: FolderConfig, folder: str) -> str:
    return {cfg.train_split: "dataset.train_split", cfg.val_split: "dataset.val_split"}.get(folder, "heldout")


def _tensors(cfg: DatasetConfig, split: str, train: bool) -> Tuple[torch.Tensor, torch.Tensor, List[str], List[str], Optional[int]]:
    """``(uint8 images, labels, classes, unreadable files, stored size)`` of a device-resident split."""
    if isinstance(cfg, MiniConfig):
        from mixtrain.data.mini import load_mini

        return (*load_mini(split), [], None)
    if isinstance(cfg, CifarConfig):
        from mixtrain.data.cifar import load_cifar

        return (*load_cifar(cfg.name, cfg.root, cfg.download, train=split == "train"), [], None)
    if isinstance(cfg, FolderConfig):
        folder = split_folder(cfg, split)
        dataset = open_image_folder(cfg.root, folder, _config_key(cfg, folder), train=train)
        images, labels, bad, stored = decode_folder(dataset, image_size(cfg, train))
        return images, labels, list(dataset.classes), bad, stored
    raise MixtrainError(f"dataset {cfg.name!r} has no loader: use cifar10, cifar100, cifar10_mini or imagefolder")


def open_split(cfg: DatasetConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    """One split (``train``, ``val`` or, for folders, a folder name) as a loader.

    ``train=True``: shuffled and augmented every epoch, with ``dataset.label_noise``
    applied. ``train=False``: every readable sample once, in order, unaugmented, at the
    evaluation size. Unreadable files are never served as samples: see ``Split.skipped``
    and the loader's ``unreadable``; :func:`check_bad_images` applies the policy.
    """
    if isinstance(cfg, FolderConfig) and not cfg.cache:
        folder = split_folder(cfg, split)
        dataset = open_image_folder(cfg.root, folder, _config_key(cfg, folder), folder_transform(cfg, train), train)
        skipped = unreadable_files(dataset) if cfg.on_bad_image == "error" else []  # a full decoding pass
        changed = corrupt_folder_labels(dataset, cfg.label_noise, options.seed) if train else 0
        loader = FolderLoader(dataset, train, options, cfg.mean, cfg.std, cfg.repeated_aug, erasing(cfg, options))
        return Split(loader, list(dataset.classes), skipped, changed)

    images, labels, classes, skipped, stored = _tensors(cfg, split, train)
    changed = 0
    if train:
        labels, changed = corrupt_labels(labels, cfg.label_noise, len(classes), options.seed)
    loader = DeviceLoader(images.to(options.device), labels.to(options.device), options.batch_size, cfg.mean, cfg.std,
                          train=train, padding=cfg.crop_padding, channels_last=options.channels_last,
                          seed=options.seed, rank=options.rank, world_size=options.world_size,
                          max_batches=options.max_batches, repeats=cfg.repeated_aug, erasing=erasing(cfg, options))
    return Split(loader, classes, skipped, changed, stored)


def erasing(cfg: DatasetConfig, options: LoaderOptions) -> Optional[RandomErasing]:
    """Training batches' random erasing (one batched implementation for both loaders)."""
    if not cfg.random_erasing:
        return None
    return RandomErasing(cfg.random_erasing, cfg.random_erasing_mode, cfg.random_erasing_count, options.seed,
                         options.rank)


def check_bad_images(cfg: DatasetConfig, splits: Sequence[Split]) -> None:
    """``dataset.on_bad_image=error``: stop, listing every unreadable file found on opening."""
    bad = [path for split in splits for path in split.skipped]
    if bad and getattr(cfg, "on_bad_image", "skip") == "error":
        raise bad_image_error(bad)


@dataclass
class Data:
    """The two splits a training run reads."""

    train: Loader
    val: Loader
    classes: List[str]
    skipped: List[str] = field(default_factory=list)  # unreadable files left out when caching
    labels_changed: int = 0  # training labels moved to another class by dataset.label_noise
    stored_size: Optional[int] = None  # cached folders: the longest side of any training image as stored

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def unreadable(self) -> List[str]:
        """Unreadable files skipped so far (when caching, or served around by the loaders)."""
        return unreadable_so_far(self.skipped, (self.train, self.val))


def unreadable_so_far(skipped: Sequence[str], loaders: Sequence[Loader]) -> List[str]:
    """Files left out when opening, and files the loaders have met unreadable since."""
    return sorted({*skipped, *(path for loader in loaders for path in getattr(loader, "unreadable", ()))})


def build_data(cfg: DatasetConfig, trainer: TrainerConfig, device: torch.device, seed: int,
               rank: int = 0, world_size: int = 1) -> Data:
    """Train and val loaders for ``cfg`` on ``device`` (this rank's share under DDP).

    ``trainer.batch_size`` and ``trainer.eval_batch_size`` are global: each of
    ``world_size`` processes takes an equal part.
    """
    common = dict(device=device, num_workers=resolve_workers(trainer.num_workers), channels_last=trainer.channels_last,
                  seed=seed, rank=rank, world_size=world_size)
    train = open_split(cfg, "train", True, LoaderOptions(trainer.batch_size // world_size,
                                                         max_batches=trainer.limit_train_batches, **common))
    val = open_split(cfg, "val", False, LoaderOptions(trainer.eval_batch_size // world_size,
                                                      max_batches=trainer.limit_val_batches, **common))
    check_same_classes(train.classes, val.classes)
    if len(train.classes) < 2:
        raise MixtrainError(f"the data has {len(train.classes)} class ({', '.join(train.classes)}): a classifier "
                            "needs at least 2 (each a folder of images under the split)")
    check_bad_images(cfg, (train, val))
    return Data(train.loader, val.loader, train.classes, train.skipped + val.skipped, train.labels_changed,
                train.stored_size)
