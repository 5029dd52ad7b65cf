"""One atomic writer for every file a run keeps: checkpoints, summaries, eval and compare reports.

Write to a temp file with a unique name in the same directory, fsync it, rename it over
the target, fsync the directory: a crash at any point leaves the old file or the new
one, never half of one, and two writers never share a temp file. A rename replaces a
symbolic link planted at the target's name, never the file it points to; the two files a
run appends to are opened without following one (:func:`open_append`).
"""

from __future__ import annotations

import fcntl
import fnmatch
import glob
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional

from mixtrain.errors import MixtrainError
from mixtrain.layout import RECORDS, WRITTEN, WRITTEN_DIRS


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
    raises FileExistsError otherwise. The temp file is locked while it is written: one left by a
    killed writer is an orphan, which the next write of ``path`` removes (and a claim of the dir).
    """
    path = Path(path)
    tmp = None
    try:
        remove_orphan_temps(path.parent, path.name)
        fd, tmp = _locked_temp(path)
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


def _locked_temp(path: Path):
    """A new temp file beside ``path``, open and locked (flock: the kernel lets go when its writer
    ends, however it ends); made again if an orphan sweep took it before it was locked."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_orphan_temps(folder: Path, name: Optional[str] = None) -> None:
    """Delete the temp files of :func:`write_atomic` in ``folder`` (of the file ``name``, or of any)
    whose writer has ended: one that a live writer holds locked stays."""
    of = f"{glob.escape(name)}." if name else ""
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}{of}*{TEMP_SUFFIX}"):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # gone meanwhile, a link, unreadable: not an orphan of ours to take
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink(missing_ok=True)
        except OSError:  # locked: its writer is alive
            pass
        finally:
            os.close(fd)


def open_append(path: Path) -> IO:
    """``path`` opened to append text (made if absent), never through a symbolic link and only if it
    is a regular file: a run writes only files in its own dir (a FIFO would block it forever)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, FILE_MODE)
    except OSError as ex:
        if os.path.islink(path):
            raise MixtrainError(not_own_file(Path(path), "is a symbolic link")) from None
        if os.path.lexists(path) and not os.path.isfile(path):  # a FIFO (ENXIO without a reader), a device, ...
            raise MixtrainError(not_own_file(Path(path), "is not a regular file")) from None
        raise MixtrainError(f"cannot write {path} ({ex.strerror}): free space or fix the dir's permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MixtrainError(not_own_file(Path(path), "is not a regular file"))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


def not_own_file(path: Path, what: str) -> str:
    return (f"{path} {what}: a run writes only regular files that it made in its own dir; remove it, or pick "
            "another dir")


def check_own_names(folder: Path) -> None:
    """Refuse a dir where a name a command writes (:data:`~mixtrain.layout.WRITTEN`) is a symbolic link
    (dangling or not), or something other than a regular file (a folder for the folders it writes):
    its writes would land outside the dir, or block."""
    folder = Path(folder)
    for name in sorted(os.listdir(folder)):
        written = [p for p in (*WRITTEN, *WRITTEN_DIRS) if fnmatch.fnmatchcase(name, p)]
        if not written:
            continue
        path = folder / name
        if path.is_symlink():
            raise MixtrainError(not_own_file(path, f"is a symbolic link (to {os.readlink(path)})"))
        if not (path.is_dir() if written[0] in WRITTEN_DIRS else path.is_file()):
            what = "folder" if written[0] in WRITTEN_DIRS else "file"
            raise MixtrainError(not_own_file(path, f"is not a regular {what}"))


def first_missing(path: Path) -> Optional[Path]:
    """The topmost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    path, missing = Path(path), None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def remove_made_dirs(path: Path, made: Optional[Path]) -> None:
    """Take back the empty folders a command made for ``path`` (``made``: the topmost, from
    :func:`first_missing`), after it refused before writing anything there."""
    if made is None:
        return
    path = Path(path)
    while path != made.parent and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


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
