"""Which dir a command writes into, and when: a run's dir and each job of a sweep.

A command writes only into a dir it holds (the OS lock of :func:`mixtrain.files.claim_dir`) and
owns: a new one, or one that holds no other command's records; ``train resume=`` into its own
run. A dir where a name the command writes is a symbolic link is refused (its writes would land
elsewhere). Each check comes before anything is written there, Hydra's own files included: a run
is claimed by the Guard before Hydra writes (``on_run_start``); a job of a sweep claims its dir
itself, since Hydra writes a job's ``.hydra/`` before any callback sees the job
(``hydra.core.utils.run_job``): the Guard has every job composed with ``hydra.output_subdir=null``
and the job writes those files, with Hydra's writer, once it holds its dir (issue 32).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import _save_config  # Hydra's writer of its three files (run_job), so they read as Hydra's
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from mixtrain.errors import MixtrainError, resume_command
from mixtrain.files import check_own_names, claim_dir, first_missing, records_in, release_dir
from mixtrain.layout import HYDRA, LAST, RUN_FILES, SUMMARY
from mixtrain.runtime import distributed


def check_writable(path: Path, what: str, key: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        raise MixtrainError(f"cannot write the {what} {path}: {existing} {why}; pick another {key}")


def claim_run_dir(run_dir: Path, command: str, resuming: bool, timestamped: bool, key: str = "hydra.run.dir"):
    """Make and lock ``run_dir`` for ``command``; return ``(run_dir, created)``. ``key`` names the dir
    in the refusals.

    A command writes only into a dir it owns: a new one, or one that holds no other command's
    records; ``train resume=`` into its own run, when no process is writing it. A dir named by
    the time (the default) that another run took first gets a suffix instead: ``-1``, ``-2``, ...
    """
    check_writable(run_dir, "run dir", key)
    candidates = [run_dir, *(Path(f"{run_dir}-{k}") for k in range(1, 100))] if timestamped else [run_dir]
    for candidate in candidates:
        created = first_missing(candidate)
        if not claim_dir(candidate):
            if timestamped and not resuming:
                continue
            raise MixtrainError(f"{candidate} is being written by another mixtrain process"
                                f"{running_pid(candidate)}: wait for it to end (or stop it), or pick another {key}")
        held = records_in(candidate)
        if held and timestamped and not resuming:
            release_dir(candidate)
            continue
        check_own_names(candidate)
        if resuming:  # the dir of the checkpoint it continues (its records are the run's own)
            return candidate, created
        if held:
            fix = f", or continue it with {resume_command(candidate)}" if command == "train" and LAST in held else ""
            kind = "a run" if any(name in held for name in RUN_FILES) else held[0]
            raise MixtrainError(f"{candidate} already holds {kind}: pick another {key}{fix}")
        return candidate, created
    raise MixtrainError(f"{run_dir} and its 99 suffixed names are all taken: pick another {key}")


def running_pid(run_dir: Path) -> str:
    """`` (pid N on HOST)`` from the run's summary.json, when it says so."""

    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
        return f" (pid {summary['pid']} on {summary['host']})" if summary.get("status") == "running" else ""
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def remove_hydra_files(run_dir: Path, created: Optional[Path], cfg) -> None:
    """After a task refused its input: take back what Hydra wrote for it, the folders this run
    made (if they hold nothing else), or in an existing run dir the Hydra subfolder it added."""
    if created is not None:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {HYDRA}:
            shutil.rmtree(run_dir, ignore_errors=True)
            folder = run_dir.parent
            while folder != created.parent and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    elif cfg.hydra.output_subdir and str(cfg.hydra.output_subdir).startswith(".hydra/resume-"):
        shutil.rmtree(run_dir / str(cfg.hydra.output_subdir), ignore_errors=True)

# --------------------------------------------------------------------------- a job of a sweep


DEFER = "hydra.output_subdir=null"  # what every job of a sweep is composed with (Hydra writes none of its files)
DEFERRED: Optional[str] = None  # the Hydra subdir the job this process runs now writes itself, once it holds its dir


def defer_job_files(cfg) -> Optional[str]:
    """At the start of a sweep: have Hydra compose every job (its launcher does, from this config's
    ``hydra.overrides.hydra``) with no Hydra files; return the subdir they go to, or None if none."""
    subdir = OmegaConf.select(cfg, "hydra.output_subdir")
    if subdir is None:
        return None
    with read_write(cfg.hydra.overrides), open_dict(cfg.hydra.overrides):
        cfg.hydra.overrides.hydra.append(DEFER)
    return str(subdir)


def restore_job_files(subdir: str) -> None:
    """When a job starts (its process): its Hydra config as Hydra composed it for the sweep, and its
    Hydra files left for :func:`job_dir` to write."""
    global DEFERRED
    hydra_cfg = HydraConfig.instance().cfg.hydra
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.output_subdir = subdir
        overrides = list(hydra_cfg.overrides.hydra)
        if DEFER in overrides:
            overrides.reverse()
            overrides.remove(DEFER)  # the last one: ours, appended after the user's
            overrides.reverse()
            hydra_cfg.overrides.hydra = overrides
    DEFERRED = subdir


def job_dir(command: str, task_cfg) -> Path:
    """This job's dir, held by this process: a run's was claimed by the Guard; a job of a sweep claims
    its own here (refusing a dir another process holds, or that holds records or links), then writes
    the Hydra files Hydra left to it."""
    global DEFERRED
    hydra = HydraConfig.get()
    out = Path(hydra.runtime.output_dir)
    if not distributed.context().is_main:
        return out
    subdir, DEFERRED = DEFERRED, None
    if subdir is None or hydra.mode != RunMode.MULTIRUN:
        if not claim_dir(out):
            raise MixtrainError(f"{out} is being written by another mixtrain process: pick another hydra.run.dir")
        return out
    claim_run_dir(out, command, resuming=False, timestamped=False, key="hydra.sweep.dir")
    files = out / subdir
    _save_config(task_cfg, "config.yaml", files)
    _save_config(copy.deepcopy(HydraConfig.instance().cfg), "hydra.yaml", files)
    _save_config(hydra.overrides.task, "overrides.yaml", files)
    return out
