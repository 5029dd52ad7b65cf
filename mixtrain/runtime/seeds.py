"""The process's global random streams, from the run's seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> None:
    """The process's global streams (model init, dropout, drop-path) from seed and rank, as timm does.

    Every rank draws its own masks; the initial weights still agree, since DDP broadcasts
    rank 0's. Data order, augmentation and mixing have generators of their own.
    """
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
