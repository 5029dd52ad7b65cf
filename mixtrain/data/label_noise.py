"""Symmetric label noise for training: a fixed fraction of labels moved to another class.

The mixup paper's Table 2 (Zhang et al. 2018) trains CIFAR-10 with 20%, 50% and 80% of
the training labels replaced by random ones and tests on clean labels. Here exactly
``round(rate * N)`` labels change (rounded half up), each to a class drawn uniformly
from the *other* classes, so the stated rate is the true rate of wrong labels. The
draw depends only on the run seed: every rank of a DDP job, and every resume, gets the
same noisy labels.
"""

from __future__ import annotations

import hashlib
import math
from typing import Tuple

import torch


def label_noise_generator(seed: int) -> torch.Generator:
    # A stream of its own, unrelated to the data order and mixing streams of the same seed.
    digest = hashlib.sha256(f"mixtrain/label_noise/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def corrupt_labels(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> Tuple[torch.Tensor, int]:
    """``(noisy_labels, changed)``: a copy of ``labels`` with ``round(rate * N)`` of them moved to another class."""
    n = labels.numel()
    changed = math.floor(rate * n + 0.5)
    if changed == 0:
        return labels, 0
    g = label_noise_generator(seed)
    which = torch.randperm(n, generator=g)[:changed]
    # old + k (mod C) with k uniform in 1..C-1 is uniform over the C-1 other classes.
    shift = torch.randint(1, num_classes, (changed,), generator=g)
    noisy = labels.clone()
    noisy[which.to(labels.device)] = (labels[which.to(labels.device)] + shift.to(labels.device)) % num_classes
    return noisy, changed


def corrupt_folder_labels(dataset, rate: float, seed: int) -> int:
    """Apply :func:`corrupt_labels` in place to an ImageFolder (``targets`` and ``samples``); return the count."""
    targets, changed = corrupt_labels(torch.tensor(dataset.targets, dtype=torch.long), rate, len(dataset.classes), seed)
    if changed:
        dataset.targets = targets.tolist()
        dataset.samples = [(path, label) for (path, _), label in zip(dataset.samples, dataset.targets)]
        dataset.imgs = dataset.samples  # ImageFolder's alias of samples
    return changed
