"""Saved predictions: a split's logits and labels (``val_logits.pt``), for paired comparisons and
pooled intervals without evaluating again."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from mixtrain.files import write_atomic


def save_logits(path: Path, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """``{"logits": [N, C] float32, "labels": [N]}``, written whole."""
    write_atomic(path, lambda f: torch.save({"logits": logits.float(), "labels": labels}, f), binary=True)


def load_logits(path: Path) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, labels)`` saved by :func:`save_logits`, or None when there is no readable file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["logits"], saved["labels"]
    except Exception:  # absent, or not ours: the caller goes without
        return None
