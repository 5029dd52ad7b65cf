"""Data: every split of every source opens through one factory, :func:`open_split`.

Training, ``mixtrain eval``, ``compare``, ``predict`` and ``preview`` all ask :func:`open_split`
for what they read, so the same split gives the same tensors everywhere: a number from
``mixtrain eval`` is the number training reported. Each source is one registry entry
(:mod:`mixtrain.data.source`): the bundled set (``mini``), CIFAR (``cifar``), ImageNet-style
folders (``folder``), WebDataset shards (``shards``), Hugging Face datasets (``hf``) and a user's own
``Dataset`` (``custom``). A split ends as a loader of
normalized ``(images, labels)`` batches on the device: a
:class:`~mixtrain.data.device_loader.DeviceLoader` for small images held as uint8, a
:class:`~mixtrain.data.streaming.FolderLoader` streaming samples otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torchvision.transforms import v2

from mixtrain.config.dataset import DatasetConfig, StreamedConfig
from mixtrain.config.registry import entry_of
from mixtrain.config.schemas import TrainerConfig
# Importing a source's module registers it: cifar, custom, folder, hf, mini, shards (webdataset).
from mixtrain.data.cifar import CifarConfig
from mixtrain.data.custom import CustomDatasetConfig
from mixtrain.data.folder import FolderConfig, bad_image_error, check_same_classes
from mixtrain.data.transforms import square_resize, stream_transform
from mixtrain.data.hf import HFConfig
from mixtrain.data.mini import MiniConfig
from mixtrain.data.shards import WebDatasetConfig
from mixtrain.data.source import DataSource, LoaderOptions, Split, register_source, resolve_workers
from mixtrain.errors import MixtrainError

__all__ = ["CifarConfig", "CustomDatasetConfig", "Data", "DataSource", "FolderConfig", "HFConfig", "LoaderOptions", "MiniConfig",
           "WebDatasetConfig",
           "Split", "build_data", "check_bad_images", "eval_image_transform", "limited_evaluation", "open_split",
           "register_source",
           "resolve_workers", "unreadable_so_far"]


def open_split(cfg: DatasetConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    """One split (``train``, ``val`` or another split's name) as a loader, through its source.

    ``train=True``: shuffled and augmented every epoch, with ``dataset.label_noise``
    applied. ``train=False``: every readable sample once, in order, unaugmented, at the
    evaluation size. Unreadable files are never served as samples: see ``Split.skipped``
    and the loader's ``unreadable``; :func:`check_bad_images` applies the policy.
    """
    if isinstance(cfg, StreamedConfig) and not cfg.resolved:  # built outside a run (a script, a benchmark)
        cfg.resolve_preprocessing()
    source = entry_of("dataset", cfg)
    if source is None:
        raise MixtrainError(f"dataset {cfg.name!r} has no registered source (mixtrain/data/source.py)")
    return source.open(cfg, split, train, options)


def eval_image_transform(cfg: DatasetConfig):
    """PIL image -> uint8 ``[3, S, S]`` as this dataset's evaluation reads its images: resize and
    center crop where images stream, a plain resize to S x S where they are held on the device
    (as :func:`~mixtrain.data.folder.decode_folder` does; CIFAR and the bundled set: 32 px)."""

    if cfg.streams:
        return stream_transform(cfg, train=False)
    size = cfg.size(False) or 32
    return v2.Compose([v2.PILToTensor(), square_resize(size, getattr(cfg, "interpolation", None) or "bilinear")])


def check_bad_images(cfg: DatasetConfig, splits: Sequence[Split]) -> None:
    """``dataset.on_bad_image=error``: stop, listing every unreadable file found on opening."""
    bad = [path for split in splits for path in split.skipped]
    if bad and getattr(cfg, "on_bad_image", "skip") == "error":
        raise bad_image_error(bad)


@dataclass
class Data:
    """The two splits a training run reads."""

    train: object
    val: object
    classes: List[str]
    skipped: List[str] = field(default_factory=list)  # unreadable files left out when caching
    labels_changed: int = 0  # training labels moved to another class by dataset.label_noise
    stored_size: Optional[int] = None  # cached folders: the longest side of any training image as stored
    notes: List[str] = field(default_factory=list)  # what opening the splits did that the run should say
    # trainer.limit_val_batches: {"images": evaluated, "of": the split's, "sample": how they were chosen}
    val_subset: Optional[Dict[str, Any]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def unreadable(self) -> List[str]:
        """Unreadable files skipped so far (when caching, or served around by the loaders)."""
        return unreadable_so_far(self.skipped, (self.train, self.val))


def unreadable_so_far(skipped: Sequence[str], loaders: Sequence[object]) -> List[str]:
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
    notes = [note for note in (train.note, val.note) if note]
    subset = None
    if trainer.limit_val_batches is not None:
        subset = limited_evaluation(val.loader, trainer.limit_val_batches)
        notes.append(subset.pop("note"))
    return Data(train.loader, val.loader, train.classes, train.skipped + val.skipped, train.labels_changed,
                train.stored_size, notes, subset)


def limited_evaluation(loader, limit: int) -> Dict[str, Any]:
    """What ``trainer.limit_val_batches`` leaves of the val split, and the line the run says about it:
    every val figure of the run is then of this subset (issue 36)."""
    total = loader.num_samples
    subset = getattr(loader, "subset", None)
    if subset is not None:
        images, sample = len(subset), "seeded, spread over the classes, the same every epoch"
    else:  # shards stream in their stored order: no sample can be drawn without reading them all
        images, sample = min(total, limit * loader.batch_size), "the first batches of the stream"
    note = (f"[yellow]val subset:[/] every val figure is of {images} of the {total} val images "
            f"(trainer.limit_val_batches={limit}: {sample})")
    return {"images": images, "of": total, "sample": sample, "note": note}
