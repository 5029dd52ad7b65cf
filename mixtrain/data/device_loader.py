"""Small images held on the training device as uint8, augmented a whole batch at a time.

The airbench recipe: decode once, keep ``[N, 3, H, W]`` uint8 on the device, and per
batch do one gather that applies a random crop of the zero-padded image and a random
horizontal flip, then normalize in float. No PIL, no per-sample Python, no worker
processes. Every random choice of an epoch (order, crop offsets, flips) is drawn at
the start of the epoch from a generator seeded by ``(seed, epoch)``, so any batch of any
epoch can be rebuilt exactly, which is what resuming in the middle of an epoch needs.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import torch

from mixtrain.data.erasing import RandomErasing
from mixtrain.data.sampling import epoch_positions, eval_subset, repeated
from mixtrain.errors import MixtrainError


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` such that ``uint8 * scale - shift == (x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), mean_t / std_t


def normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> normalized float32, in the memory format the model wants."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return torch.addcmul(-shift, images.float(), scale)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # A fresh stream per epoch, independent of how many numbers earlier epochs drew.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class DeviceLoader:
    """Iterates ``(images, labels)`` batches of a device-resident uint8 dataset.

    Training (``train=True``): a new random order every epoch, random crop with
    ``padding`` pixels of zero padding and random flips (``hflip``, ``vflip``), incomplete last
    batch dropped. Evaluation: the data in order, unaugmented, every sample once.
    With ``world_size > 1`` each rank takes its own slice of the same epoch order.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 train: bool, options, padding: int = 4, repeats: int = 1,
                 erasing: Optional[RandomErasing] = None, hflip: float = 0.5, vflip: float = 0.0) -> None:
        """``options``: a :class:`~mixtrain.data.source.LoaderOptions` (batch size, channels_last,
        seed, rank, world size, max batches)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 [N, C, H, W] images, got {images.dtype} {tuple(images.shape)}")
        self.labels = labels
        self.batch_size = batch_size = options.batch_size
        self.train = train
        self.padding = padding if train else 0
        self.hflip, self.vflip = hflip, vflip
        self.channels_last = options.channels_last
        self.seed = options.seed
        self.rank, self.world_size = options.rank, options.world_size
        self.max_batches = options.max_batches
        self.repeats = repeats if train else 1
        self.erasing = erasing if train else None
        self.epoch = 0
        self.height, self.width = images.shape[-2:]
        # Pad once for the whole dataset, so a crop is a plain gather per batch.
        p = self.padding
        self.images = torch.nn.functional.pad(images, (p, p, p, p)) if p else images
        self.scale, self.shift = normalizer(mean, std, images.device)
        # A limited evaluation reads a seeded sample spread over the classes, not the first batches.
        self.subset = None
        if not train and self.max_batches is not None:
            self.subset = eval_subset(len(labels), self.max_batches * batch_size * self.world_size, self.seed,
                                      labels.cpu())
        if train and self.samples_per_rank < batch_size:
            raise MixtrainError(
                f"trainer.batch_size ({batch_size}) is larger than the training set per process "
                f"({self.samples_per_rank} images): lower trainer.batch_size"
            )

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def samples_per_rank(self) -> int:
        n, r, w = self.num_samples, self.rank, self.world_size
        if self.train:
            return len(epoch_positions(n, self.repeats, r, w))
        return len(range(r, n if self.subset is None else len(self.subset), w))

    def __len__(self) -> int:
        if self.train:
            batches = self.samples_per_rank // self.batch_size
        else:
            batches = -(-self.samples_per_rank // self.batch_size)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_plan(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's sample order, crop offsets ``[n, 2]`` and flips ``[n, 2]`` (horizontal, vertical)."""
        n = self.num_samples
        if not self.train:
            order = torch.arange(n) if self.subset is None else self.subset
            order = order[self.rank::self.world_size]
            return order, torch.zeros(len(order), 2, dtype=torch.long), torch.zeros(len(order), 2, dtype=torch.bool)
        g = epoch_generator(self.seed, self.epoch)
        order = repeated(torch.randperm(n, generator=g), self.repeats)
        # Crops and flips per position: the copies of a repeated image get their own.
        offsets = torch.randint(0, 2 * self.padding + 1, (len(order), 2), generator=g)
        flips = torch.rand(len(order), 2, generator=g) < torch.tensor([self.hflip, self.vflip])
        # Each rank takes an equal strided share of one shared order (rank-major batches).
        take = epoch_positions(n, self.repeats, self.rank, self.world_size)
        return order[take], offsets[take], flips[take]

    def iter_from(self, start_step: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the current epoch from ``start_step`` on (0 = the whole epoch)."""
        order, offsets, flips = (t.to(self.device, non_blocking=True) for t in self._epoch_plan())
        rows = torch.arange(self.height, device=self.device)
        cols = torch.arange(self.width, device=self.device)
        channels = torch.arange(self.images.shape[1], device=self.device).view(1, -1, 1, 1)
        bs = self.batch_size
        for step in range(start_step, len(self)):
            idx = order[step * bs:(step + 1) * bs]
            if self.train:
                dy, dx = offsets[step * bs:(step + 1) * bs].unbind(1)
                hflip, vflip = flips[step * bs:(step + 1) * bs].unbind(1)
                r = (torch.where(vflip[:, None], self.height - 1 - rows, rows) + dy[:, None]).view(-1, 1, self.height, 1)
                c = torch.where(hflip[:, None], self.width - 1 - cols, cols) + dx[:, None]
                batch = self.images[idx.view(-1, 1, 1, 1), channels, r, c.view(-1, 1, 1, self.width)]
            else:
                batch = self.images[idx]
            batch = normalize(batch, self.scale, self.shift, self.channels_last)
            if self.erasing is not None:
                batch = self.erasing(batch, self.epoch, step)
            yield batch, self.labels[idx]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)
