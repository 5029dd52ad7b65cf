"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and finding a run's last one."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from mixtrain.errors import MixtrainError

FORMAT = "mixtrain-checkpoint-v1"


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same dir, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or ``last.pt`` of a run dir."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise MixtrainError(f"no checkpoint at {path}: pass a .pt file or a run dir that holds last.pt")
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a mixtrain checkpoint without running any code from the file."""
    path = checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as ex:
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise MixtrainError(f"{path} is not a readable mixtrain checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MixtrainError(f"{path} is not a mixtrain checkpoint (no '{FORMAT}' marker)")
    return state
