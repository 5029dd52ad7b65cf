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
from typing import Optional

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


def eval_subset(size: int, count: int, seed: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``count`` of ``size`` sample indices for a limited evaluation (``trainer.limit_val_batches``):
    a sample drawn once from ``seed`` (the same every epoch), spread over the classes.

    A split is often stored class by class (an ImageFolder, CIFAR's test batches in part), so its
    first batches would hold one class (issue 36). With ``labels``, each class gives its share in
    proportion to its size (a systematic stratified sample: each class's samples in a random order,
    each placed at the middle of its slot of the class, the earliest slots taken first), and the
    indices come in that order, so that every batch holds every class it can; without, a uniform
    random sample.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    order = torch.randperm(size, generator=g)
    count = min(count, size)
    if labels is None:
        return order[:count]
    drawn = labels[order].long()
    counts = torch.bincount(drawn)
    by_class = torch.argsort(drawn, stable=True)  # grouped by class, each in the random order
    rank = torch.empty(size, dtype=torch.long)
    rank[by_class] = torch.arange(size) - (counts.cumsum(0) - counts)[drawn[by_class]]
    slot = (rank.double() + 0.5) / counts[drawn].double()
    return order[torch.argsort(slot, stable=True)[:count]]
