"""Shared by the benchmarks: where the real CIFAR-10 JPEG folder is, and robust timing."""

from __future__ import annotations

import os
import statistics
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARBALL = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def cifar10_jpeg_root() -> Path:
    """The extracted CIFAR-10 JPEG folder (``train/`` and ``test/``), extracting it once if needed."""
    base = Path(os.path.expanduser(os.environ.get("MIXTRAIN_DATA", "~/.cache/mixtrain/data")))
    root = base / "cifar10-jpeg"
    if not (root / "train").is_dir():
        if not TARBALL.is_file():
            raise SystemExit(f"need {root} or {TARBALL}: set MIXTRAIN_DATA to the folder holding cifar10-jpeg/")
        base.mkdir(parents=True, exist_ok=True)
        print(f"extracting {TARBALL} into {base} ...", flush=True)
        with tarfile.open(TARBALL) as tar:
            tar.extractall(base, filter="data")
    return root


def median(values):
    return statistics.median(values)


def spread(values) -> str:
    return f"min {min(values):.0f} / max {max(values):.0f}"
