"""Saved predictions: a split's logits and labels (``val_logits.pt``), for paired comparisons and
pooled intervals without evaluating again."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, NamedTuple, Optional

import torch

from mixtrain.files import write_atomic


def save_logits(path: Path, logits: torch.Tensor, labels: torch.Tensor, fgsm: Optional[dict] = None) -> None:
    """``{"logits": [N, C] float32, "labels": [N]}``, written whole; ``mixtrain eval`` adds ``"fgsm":
    {"eps_255": [E], "predictions": [E, N]}``, each image's top-1 class under attack, for paired tests."""
    saved = {"logits": logits.float(), "labels": labels, **({"fgsm": fgsm} if fgsm is not None else {})}
    write_atomic(path, lambda f: torch.save(saved, f), binary=True)


class Predictions(NamedTuple):
    logits: torch.Tensor  # [N, C]
    labels: torch.Tensor  # [N]
    fgsm: Dict[float, torch.Tensor]  # eps in 1/255 -> [N] top-1 class under FGSM (mixtrain eval's files only)


def load_logits(path: Path) -> Optional[Predictions]:
    """What :func:`save_logits` wrote, or None when there is no readable file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        attacked = saved.get("fgsm") or {"eps_255": [], "predictions": []}
        return Predictions(saved["logits"], saved["labels"],
                           dict(zip(map(float, attacked["eps_255"]), attacked["predictions"])))
    except Exception:  # absent, or not ours: the caller goes without
        return None
