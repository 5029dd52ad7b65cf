"""One atomic writer for every file a run keeps: checkpoints, summaries, eval and compare reports.

Write to a temp file with a unique name in the same directory, fsync it, rename it over
the target, fsync the directory: a crash at any point leaves the old file or the new
one, never half of one, and two writers never share a temp file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

# The files that show a training run has written into a dir (even one whose first epoch crashed).
RUN_FILES = ("summary.json", "metrics.jsonl", "last.pt")


def write_atomic(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))
