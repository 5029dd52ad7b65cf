"""A dataset source is one registry entry: its config dataclass and how it opens a split.

A source's module (``cifar``, ``mini``, ``folder``, ``custom``) defines its config, registers a
:class:`DataSource` and opens its splits through the helpers here, so that every source ends the
same way: a loader of normalized ``(images, labels)`` batches on the device, with the same
shuffling, ranks, label noise and random erasing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import torch

from mixtrain.config.dataset import DatasetConfig
from mixtrain.config.registry import Entry, register
from mixtrain.data.device_loader import DeviceLoader
from mixtrain.data.erasing import RandomErasing
from mixtrain.data.label_noise import corrupt_labels


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
    loader: Any  # DeviceLoader or a streaming loader: normalized batches on the device
    classes: List[str]
    skipped: List[str] = field(default_factory=list)  # unreadable files found when opening (left out)
    labels_changed: int = 0  # training labels moved to another class by dataset.label_noise
    stored_size: Optional[int] = None  # cached folders: the longest side of any image as stored
    note: str = ""  # what opening it did that the run should say (e.g. counted the shards once)


@dataclass(frozen=True)
class DataSource(Entry):
    # (its config, split: train | val | another split's name, train, LoaderOptions) -> Split
    open: Optional[Callable[[Any, str, bool, LoaderOptions], Split]] = None


def register_source(name: str, schema: type, open: Callable[[Any, str, bool, LoaderOptions], Split],
                    names: Optional[Tuple[str, ...]] = None) -> DataSource:
    """Register a dataset source: ``dataset=<option>`` then opens through it everywhere."""
    return register(DataSource("dataset", name, schema, names=names, open=open))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(num_workers) -> int:
    """``trainer.num_workers``: a count, or ``auto`` = min(8, the cores this process may use)."""
    return min(8, usable_cores()) if num_workers == "auto" else int(num_workers)


def erasing(cfg: DatasetConfig, options: LoaderOptions) -> Optional[RandomErasing]:
    """Training batches' random erasing (one batched implementation for every loader)."""
    if not cfg.random_erasing:
        return None
    return RandomErasing(cfg.random_erasing, cfg.random_erasing_mode, cfg.random_erasing_count, options.seed,
                         options.rank)


def device_split(cfg: DatasetConfig, images: torch.Tensor, labels: torch.Tensor, classes: List[str], train: bool,
                 options: LoaderOptions, skipped: Optional[List[str]] = None,
                 stored_size: Optional[int] = None) -> Split:
    """A split held on the device as uint8 (small images), augmented there a batch at a time."""
    changed = 0
    if train:
        labels, changed = corrupt_labels(labels, cfg.label_noise, len(classes), options.seed)
    loader = DeviceLoader(images.to(options.device), labels.to(options.device), cfg.mean, cfg.std, train, options,
                          padding=cfg.crop_padding, repeats=cfg.repeated_aug, erasing=erasing(cfg, options),
                          hflip=cfg.hflip, vflip=cfg.vflip)
    return Split(loader, classes, list(skipped or []), changed, stored_size)
