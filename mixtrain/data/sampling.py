"""An epoch's order of samples, shared by both loaders: shuffling, ranks and repeated augmentation.

Every rank draws the same permutation from a generator seeded by (seed, epoch) and takes
a strided share of it. With ``dataset.repeated_aug=k`` each image appears k times in a row
(DeiT's and timm's ``RepeatAugSampler``): the k copies of an image land on different
ranks (or, in one process, in the same batch) with augmentations of their own, and an
epoch keeps about the dataset's length (rounded down to a multiple of 256, as timm does),
so an epoch shows about 1/k of the distinct images.
"""

from __future__ import annotations

import math

import torch


def epoch_positions(size: int, repeats: int, rank: int, world_size: int) -> torch.Tensor:
    """The positions of this rank's samples in the epoch's (repeated) order."""
    if repeats == 1:
        per_rank = size // world_size
        return torch.arange(rank, per_rank * world_size, world_size)
    # timm's RepeatAugSampler: num_selected_samples, and ranks striding over the repeated order.
    selected = size // 256 * 256 // world_size if size >= 256 else math.ceil(size / world_size)
    selected = min(selected, math.ceil(size * repeats / world_size))
    return torch.arange(rank, rank + selected * world_size, world_size)[:selected] % (size * repeats)


def repeated(order: torch.Tensor, repeats: int) -> torch.Tensor:
    """``[a, b, ...] -> [a, a, a, b, b, b, ...]`` for three repeats."""
    return order if repeats == 1 else order.repeat_interleave(repeats)
