"""A checkpoint's stored temperature: ``<checkpoint>.calibration.json`` beside it (``best.pt``:
``best.calibration.json``), written by ``mixtrain eval calibrate=true``, read by predict and export."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from mixtrain import layout
from mixtrain.errors import MixtrainError
from mixtrain.files import claim_dir, write_json_atomic

LEGACY_FILE = "calibration.json"  # one per run dir, before each checkpoint had its own


def calibration_path(checkpoint_path: Path) -> Path:
    """Where a checkpoint's temperature is stored: ``best.calibration.json`` beside ``best.pt``."""
    return checkpoint_path.with_name(layout.calibration_file(checkpoint_path.name))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def claim_calibration(checkpoint_path: Path) -> None:
    """Take the lock of the checkpoint's run dir, where its calibration goes: never while a training
    process writes it. ``eval calibrate=true`` asks first, before it evaluates or writes anything."""
    if not claim_dir(checkpoint_path.parent):
        raise MixtrainError(f"{checkpoint_path.parent} is being written by a running mixtrain process: calibrate "
                            "after it ends (its checkpoints still change)")


def write_calibration(checkpoint_path: Path, temperature: Dict[str, Any]) -> Path:
    """T, where it was fitted, ECE before/after and the checkpoint's sha256, beside the checkpoint
    (in its run dir, whose lock this holds: :func:`claim_calibration`)."""
    claim_calibration(checkpoint_path)
    path = calibration_path(checkpoint_path)
    write_json_atomic(path, {"temperature": temperature["value"], "fit_on": temperature["fit_on"],
                             "ece_before": temperature["before"]["ece"], "ece_after": temperature["after"]["ece"],
                             "checkpoint": checkpoint_path.name, "checkpoint_sha256": sha256_of(checkpoint_path)})
    return path


def read_calibration(checkpoint_path: Path) -> Optional[Dict[str, Any]]:
    """The stored calibration of this checkpoint, or None (absent, or fitted on another checkpoint file).

    A file there that is not a calibration (cut short, edited, not UTF-8, a folder) is one line: using
    the model without its temperature would change every probability without a word."""
    digest = None
    for path in (calibration_path(checkpoint_path), checkpoint_path.parent / LEGACY_FILE):
        if not os.path.lexists(path):
            continue
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            temperature = saved["temperature"]
            if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
                raise ValueError(f"temperature {temperature!r}")
        except (OSError, ValueError, KeyError, TypeError) as ex:
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:120]
            raise MixtrainError(f"{path} is damaged ({first}): write it again with mixtrain eval "
                                f"checkpoint={checkpoint_path} calibrate=true, or remove it") from None
        digest = digest or sha256_of(checkpoint_path)
        if saved.get("checkpoint_sha256") == digest:
            return saved
    return None
