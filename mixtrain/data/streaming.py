"""The streaming path every source that decodes as it trains shares (folders, shards' readers, Hugging
Face datasets, a user's own Dataset): items read one sample at a time in DataLoader workers, each
training sample's random choices drawn from a seed of its own, uint8 batches normalized on the device.

Every random choice of a training image is drawn from a seed of its own, a function of
(run seed, epoch, position in the epoch): the batches of an epoch are the same whatever
the number of workers, whether they persist, and where a resumed run starts.

A sample that cannot be read never stops a run mid-epoch: training serves the next readable
sample in its place; evaluation drops it from its batch (no stand-in ever reaches a metric).
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from mixtrain.config.dataset import StreamedConfig
from mixtrain.data.device_loader import epoch_generator, normalize, normalizer
from mixtrain.data.images import UNREADABLE
from mixtrain.data.sampling import epoch_positions, eval_subset, repeated
from mixtrain.data.source import LoaderOptions, Split, erasing
from mixtrain.errors import MixtrainError
from mixtrain.files import forget_inherited_claims

IGNORE_LABEL = -1  # an evaluation sample that stands in for an unreadable file (dropped from its batch)


@contextlib.contextmanager
def seeded(seed: Optional[int]):
    """Seed torch's (CPU), Python's and NumPy's global generators for one sample.

    torchvision's transforms draw from torch, timm's RandAugment and AugMix from ``random``
    and ``numpy.random``. In the main process (no loader workers) the states are put back
    afterwards, so that the process's own streams (dropout) stay untouched; a loader worker
    draws from them for its samples alone, each seeded first, so it skips the restore (NumPy's
    ``get_state``/``set_state`` copy 2.5 kB: 0.14 ms a sample). Only the CPU generator is seeded:
    the transforms run there, and ``torch.manual_seed`` also queues a seed for every lazy device
    (CUDA, XPU, MTIA), each with a formatted stack trace (0.2-0.6 ms a sample, more than a
    32 px decode and crop; issue 25).
    """
    if seed is None:
        yield
        return
    generator = torch.default_generator
    restore = torch.utils.data.get_worker_info() is None
    states = (generator.get_state(), random.getstate(), np.random.get_state()) if restore else None
    generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if restore:
            generator.set_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])


class CheckedItems(torch.utils.data.Dataset):
    """Items ``(image, label, bad_index)`` of a source read one sample at a time: ``bad_index`` is -1,
    or the index of an unreadable sample this item replaces (the main process collects them).

    Indexed by ``(index, seed)`` pairs (:class:`EpochSampler`) or by a plain index. A source
    implements :meth:`read` and :meth:`name`, and sets ``transform`` and ``train``.
    """

    transform = None
    train = True

    def read(self, index: int) -> Tuple[Image.Image, int]:
        """The sample's RGB image and label; raises one of :data:`UNREADABLE` for a broken one."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How warnings name a sample (its path)."""
        raise NotImplementedError

    def labels(self) -> Optional[torch.Tensor]:
        """Every sample's label, where the source knows them without decoding an image; else None."""
        return None

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        for offset in range(len(self)):
            try:
                image, label = self.read((index + offset) % len(self))
            except UNREADABLE:
                continue
            if self.transform is not None:
                with seeded(seed):
                    image = self.transform(image)
            if offset == 0:
                return image, label, -1
            return image, (label if self.train else IGNORE_LABEL), index
        raise MixtrainError(f"no readable sample in {self.name(index)} and the rest of its split: check the data")


class EpochSampler(Sampler):
    """This rank's ``(index, seed)`` pairs for the current epoch, from position ``start`` on.

    Training: one shared random order per epoch (each rank takes a strided slice, as
    :class:`~mixtrain.data.device_loader.DeviceLoader` does) and a seed per position for
    the sample's augmentation. Evaluation: the samples in order, strided over ranks with
    no padding. Skipping to ``start`` decodes nothing.
    """

    def __init__(self, size: int, train: bool, seed: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1, subset: Optional[torch.Tensor] = None) -> None:
        self.size, self.train, self.seed = size, train, seed
        self.rank, self.world_size, self.repeats = rank, world_size, repeats if train else 1
        self.subset = subset  # evaluation: the indices of a limited evaluation's sample (eval_subset)
        self.epoch, self.start = 0, 0

    def plan(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            order = (torch.arange(self.size) if self.subset is None else self.subset)[self.rank::self.world_size]
            return order, torch.zeros_like(order)
        g = epoch_generator(self.seed, self.epoch)
        order = repeated(torch.randperm(self.size, generator=g), self.repeats)
        seeds = torch.randint(0, 2**62, (len(order),), generator=g)  # per position: each copy its own
        take = epoch_positions(self.size, self.repeats, self.rank, self.world_size)
        return order[take], seeds[take]

    @property
    def samples(self) -> int:
        """Samples this rank sees in a whole epoch."""
        if self.train:
            return len(epoch_positions(self.size, self.repeats, self.rank, self.world_size))
        return len(range(self.rank, self.size if self.subset is None else len(self.subset), self.world_size))

    def __len__(self) -> int:
        return self.samples - self.start

    def __iter__(self):
        order, seeds = self.plan()
        return zip(order[self.start:].tolist(), seeds[self.start:].tolist() if self.train else [None] * len(order))


def device_batch(loader, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
    """A streamed batch on ``loader``'s device, normalized (and erased, to train); to evaluate, without the
    stand-ins of unreadable files (left out of every metric): None when nothing is left."""
    if not loader.train:
        keep = labels != IGNORE_LABEL
        if not keep.all():
            if not keep.any():
                return None
            images, labels = images[keep], labels[keep]
    images = normalize(images.to(loader.device, non_blocking=True), loader.scale, loader.shift, loader.channels_last)
    if loader.erasing is not None:
        images = loader.erasing(images, epoch, step)
    return images, labels.to(loader.device, non_blocking=True)


class FolderLoader:
    """A DataLoader over :class:`CheckedItems` (an ImageFolder, ...) whose uint8 batches are normalized
    on the device."""

    def __init__(self, dataset: CheckedItems, train: bool, options, mean: Sequence[float],
                 std: Sequence[float], repeats: int = 1, erasing=None) -> None:
        self.dataset, self.train = dataset, train
        self.device, self.channels_last = options.device, options.channels_last
        self.batch_size, self.max_batches = options.batch_size, options.max_batches
        self.erasing = erasing if train else None
        # A limited evaluation reads a seeded sample spread over the classes, not the first batches.
        self.subset = None
        if not train and self.max_batches is not None:
            self.subset = eval_subset(len(dataset), self.max_batches * self.batch_size * options.world_size,
                                      options.seed, dataset.labels())
        self.sampler = EpochSampler(len(dataset), train, options.seed, options.rank, options.world_size, repeats,
                                    self.subset)
        if train and self.sampler.samples < self.batch_size:
            raise MixtrainError(
                f"trainer.batch_size ({self.batch_size}) is larger than the training set per process "
                f"({self.sampler.samples} images): lower trainer.batch_size"
            )
        self.loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=options.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=train, persistent_workers=options.num_workers > 0,
            # Workers' base seeds come from here, not from the process's global stream.
            generator=torch.Generator().manual_seed(options.seed),
            # A worker outliving a killed run must not keep its run dir locked.
            worker_init_fn=forget_inherited_claims,
        )
        self.scale, self.shift = normalizer(mean, std, self.device)
        self.unreadable: Set[str] = set()  # files replaced so far (reported once by the run)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        samples = self.sampler.samples
        batches = samples // self.batch_size if self.train else -(-samples // self.batch_size)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def iter_from(self, start_step: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.start = start_step * self.batch_size
        batches = len(self)
        for step, (images, labels, bad) in enumerate(self.loader, start=start_step):
            if step >= batches:
                break
            if (bad >= 0).any():
                self.unreadable.update(self.dataset.name(int(i)) for i in bad[bad >= 0])
            batch = device_batch(self, images, labels, self.sampler.epoch, step)
            if batch is not None:
                yield batch

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


def stream_split(cfg: StreamedConfig, dataset: CheckedItems, train: bool, options: LoaderOptions,
                 skipped: Sequence[str] = (), changed: int = 0) -> Split:
    """A split of a source read sample by sample, in DataLoader workers."""
    loader = FolderLoader(dataset, train, options, cfg.mean, cfg.std, cfg.repeated_aug, erasing(cfg, options))
    return Split(loader, list(dataset.classes), list(skipped), changed)
