"""Saved predictions: a split's logits and labels (``val_logits.pt``), for paired comparisons and
pooled intervals without evaluating again."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from mixtrain.files import write_atomic


def save_logits(path: Path, logits: torch.Tensor, labels: torch.Tensor, fgsm: Optional[dict] = None) -> None:
    """``{"logits": [N, C] float32, "labels": [N]}``, written whole; ``mixtrain eval`` adds ``"fgsm":
    {"eps_255": [E], "predictions": [E, N]}``, each image's top-1 class under attack, for paired tests."""
    saved = {"logits": logits.float(), "labels": labels, **({"fgsm": fgsm} if fgsm is not None else {})}
    write_atomic(path, lambda f: torch.save(saved, f), binary=True)


def load_logits(path: Path) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, labels)`` saved by :func:`save_logits`, or None when there is no readable file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["logits"], saved["labels"]
    except Exception:  # absent, or not ours: the caller goes without
        return None
