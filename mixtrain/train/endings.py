"""How a run that did not complete says why, in one line: what went wrong, what to do, and how to go on.

A full disk, a file size limit, a run dir removed while the run ran, a loader worker killed (the
kernel's out-of-memory killer, mostly), data that went bad mid-run (a shard server gone): each is
told as such, and the way to continue is named only where a checkpoint is there to continue from.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mixtrain import layout
from mixtrain.errors import MixtrainError, RunStopped, resume_command

# What to do about a write into the run dir that failed, by errno.
DISK_FIXES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space in your quota",
              errno.EFBIG: "raise the file size limit (ulimit -f)",
              errno.ENOENT: "leave the run dir's files in place while it runs"}


def how_to_go_on(run_dir: Path) -> str:
    if (run_dir / layout.LAST).is_file():
        return f"continue from the last checkpoint with {resume_command(run_dir)}"
    return "start the run again (no checkpoint was written yet)"


def disk_fix(ex: OSError, run_dir: Path) -> str:
    """What to do after a write into ``run_dir`` failed with ``ex``, and how to go on."""
    if not run_dir.is_dir():
        return f"the run dir {run_dir} is gone (removed while the run ran); nothing is left to continue"
    return f"{DISK_FIXES.get(ex.errno, 'fix the dir and its permissions')}; {how_to_go_on(run_dir)}"


def is_worker_death(ex: BaseException) -> bool:
    """torch's DataLoader: ``DataLoader worker (pid(s) N) exited unexpectedly`` / ``... is killed by signal``."""
    return isinstance(ex, RuntimeError) and str(ex).startswith("DataLoader worker (pid")


def ending(ex: BaseException, run_dir: Path) -> BaseException:
    """The exception a run that ended on ``ex`` raises: ``ex`` itself, or one line that says it better."""
    if isinstance(ex, RunStopped):
        return ex
    if isinstance(ex, MixtrainError):  # the data went bad mid-run: a shard server gone, a damaged shard
        return MixtrainError(f"{ex}; then {how_to_go_on(run_dir)}") if (run_dir / layout.LAST).is_file() else ex
    if isinstance(ex, OSError):  # the disk under the run: full, a size limit, gone read-only, removed
        where = os.fsdecode(ex.filename) if ex.filename else str(run_dir)
        return RunStopped(f"cannot write {where} ({ex.strerror or ex}): {disk_fix(ex, run_dir)}")
    if is_worker_death(ex):
        return RunStopped(f"a data loader worker died ({str(ex).splitlines()[0]}): often the system ran out of "
                          f"memory (lower trainer.num_workers or trainer.batch_size); {how_to_go_on(run_dir)}")
    return ex
