"""One atomic writer for every file a run keeps: checkpoints, summaries, eval and compare reports.

Write to a temp file with a unique name in the same directory, fsync it, rename it over
the target, fsync the directory: a crash at any point leaves the old file or the new
one, never half of one, and two writers never share a temp file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

from mixtrain.layout import RECORDS


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes its file 0600; a result is shared as the user's umask says (0644 under 022).
FILE_MODE = 0o666 & ~_umask()
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def write_atomic(path: Path, write: Callable[[IO], None], binary: bool = False, overwrite: bool = True) -> None:
    """Write ``path`` through a temp file: readers see the old file or the new one, never half.

    ``overwrite=False`` puts the file in place only if none exists (a hard link: atomic too), and
    raises FileExistsError otherwise. A temp file left by a killed writer is an orphan that
    :func:`remove_orphan_temps` clears when the dir is claimed again.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            kept = WriteErrors(f)
            try:
                write(kept)
            except Exception:
                if kept.error is None:
                    raise
                raise kept.error from None  # the disk's own words, not the library's
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as ex:  # a full disk, a size limit, the dir gone: name the file being written, not its temp
        if ex.filename is None or os.path.basename(os.fsdecode(ex.filename)).startswith(f"{TEMP_PREFIX}{path.name}."):
            ex.filename = str(path)
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


class WriteErrors:
    """A file that keeps the OSError of a failed write: torch.save turns "No space left on device" or
    "File too large" into a RuntimeError of its own (``PytorchStreamWriter failed writing``, or
    ``unexpected pos``), and the caller should still say what the disk said."""

    def __init__(self, file: IO) -> None:
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as ex:
            self.error = ex
            raise

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def remove_orphan_temps(folder: Path) -> None:
    """Delete the temp files of :func:`write_atomic` in ``folder``: call it only while holding the
    folder's claim, when no other writer can be using one."""
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))

# --------------------------------------------------------------------------- one writer per dir


_held: dict = {}  # resolved dir -> fd of the dir, flock'ed for the life of this process


def records_in(path: Path) -> list:
    """The records of :data:`mixtrain.layout.RECORDS` that ``path`` holds."""
    return [name for name in RECORDS if (path / name).exists()]


def claim_dir(path: Path) -> bool:
    """Make ``path`` (and its parents) and take its exclusive lock for the life of this process.

    The lock is ``flock`` on the directory itself (no lock file to leave behind): the kernel
    releases it when the process ends, however it ends, so a killed run never blocks its
    resume. Returns False when another process holds it; True when this one does (again).
    """

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        return True
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held[key] = fd
    remove_orphan_temps(path)  # left by a writer that was killed: nobody else can be writing here now
    return True


def release_dir(path: Path) -> None:
    """Let go of the lock on ``path`` (a dir this process claimed and then did not use)."""
    fd = _held.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def release_claims() -> None:
    """Let go of every lock this process holds (tests; a process ending lets go by itself)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


def forget_inherited_claims(_worker_id: int = 0) -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's lock fds, so
    that the lock goes with the parent, not with a worker that outlives it by a few seconds."""
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
