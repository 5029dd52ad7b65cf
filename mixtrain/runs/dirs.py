"""Run directories: what each holds, and what state its run was left in.

A run is a directory with ``summary.json``, ``metrics.jsonl`` or Hydra's ``.hydra/``
(every job of a multirun gets its ``.hydra/`` before it starts). ``summary.json``
says ``running`` (rewritten every epoch, with the pid and host), ``completed``,
``failed`` or ``interrupted``; a run killed hard keeps saying ``running``, so a run
whose process is gone is reported ``crashed``. A directory with no results, and a
job of a sweep that never got a directory, are ``not started``. No run is dropped.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from mixtrain.config.overrides import override_key, sweep_jobs
from mixtrain.config.store import flatten
from mixtrain.errors import MixtrainError
from mixtrain.layout import EVAL, HYDRA, METRICS as METRICS_FILE, MULTIRUN, PREVIEW, REPORTED, SUMMARY
from mixtrain.options import compose

COMPLETED = "completed"
# The order of the status counts in tables.
STATUSES = (COMPLETED, "running", "interrupted", "failed", "crashed", "not started")
METRICS = REPORTED


@dataclass
class Run:
    path: Path
    status: str
    detail: str = ""  # why a run is not completed: its error, its pid, what is missing
    params: Dict[str, Any] = field(default_factory=dict)  # flattened config, dotted keys
    metrics: Dict[str, float] = field(default_factory=dict)
    epochs_done: int = 0
    last_val_acc1: float = math.nan
    notes: List[str] = field(default_factory=list)  # damaged files read around (the report says each)
    loggers: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # summary.json's: where each logger logged

    @property
    def seed(self) -> Any:
        return self.params.get("seed")

    @property
    def epochs_total(self) -> Any:
        return self.params.get("trainer.epochs")

# --------------------------------------------------------------------------- finding runs


def is_run_dir(path: Path) -> bool:
    if (path / SUMMARY).is_file() or (path / METRICS_FILE).is_file():
        return True
    # `mixtrain preview` and `mixtrain eval` write .hydra/ too; their dirs (preview.png, eval.json) are not runs.
    return (path / HYDRA).is_dir() and not any((path / name).is_file() for name in (PREVIEW, EVAL))


def natural_key(path: Path) -> Tuple:
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    return tuple((0, int(p), "") if p.isdecimal() else (1, 0, p) for p in path.parts)


def find_run_dirs(root: Path) -> List[Path]:
    """``root`` itself if it is a run, else every run below it (a sweep dir, a tree of sweeps)."""
    if is_run_dir(root):
        return [root]
    found = set()
    for name in (SUMMARY, METRICS_FILE):
        found.update(p.parent for p in root.rglob(name))
    found.update(p.parent for p in root.rglob(HYDRA) if p.is_dir() and is_run_dir(p.parent))
    return sorted(found, key=natural_key)


def read_json(path: Path) -> Optional[dict]:
    with open(path, encoding="utf-8", errors="replace") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def read_metrics(path: Path) -> Tuple[List[dict], str]:
    """The epoch records of ``metrics.jsonl``; a line cut short by a crash (or otherwise damaged) is
    skipped, and the second value says how many were ("" when none, or no file)."""
    if not os.path.lexists(path):
        return [], ""
    if not path.is_file():
        return [], f"{path.name} is not a file: no epoch records read"
    records, skipped = [], 0
    # A byte that is not UTF-8 spoils its line, not the file.
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # not UTF-8, not JSON
            skipped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    return records, f"{path.name}: skipped {skipped} damaged line(s)" if skipped else ""


def _hydra_config(run_dir: Path) -> Tuple[Dict[str, Any], str]:
    """The job's composed config from ``.hydra/config.yaml`` (resolved when it can be), or {} and what
    was wrong with the file ("" when there is none)."""

    path = run_dir / HYDRA / "config.yaml"
    if not os.path.lexists(path):
        return {}, ""
    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig) or not cfg:
            raise ValueError("empty, or not a mapping")
    except Exception as ex:  # an unreadable file: the run is reported, its config from summary.json if any
        first = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:120]
        return {}, f"{HYDRA}/config.yaml is unreadable ({first})"
    try:
        return OmegaConf.to_container(cfg, resolve=True), ""
    except Exception:  # e.g. an environment variable missing here
        return OmegaConf.to_container(cfg, resolve=False), ""

# --------------------------------------------------------------------------- run status


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (Unix time), from /proc on Linux; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return None
    # Field 22 (starttime, clock ticks after boot) counts from after the ")" of the command name.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, last_written: float) -> bool:
    """Whether the process that last wrote a file at ``last_written`` is still running.

    A pid can be reused after a crash: a live process that started after the file was
    last written cannot be its writer.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    except (OverflowError, ValueError):
        return False
    started = process_start_time(pid)
    return started is None or started <= last_written + 1.0


def _status_from_summary(summary: dict, summary_path: Path, records: List[dict]) -> Tuple[str, str]:
    status = summary.get("status")
    if status == "running":
        pid, host = summary.get("pid"), summary.get("host")
        if host and host != socket.gethostname():
            return "running", f"on {host}, pid {pid} (not checked from {socket.gethostname()})"
        if isinstance(pid, int) and process_alive(pid, summary_path.stat().st_mtime):
            return "running", f"pid {pid}"
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary_path.stat().st_mtime))
        return "crashed", f"pid {pid} is gone; last update {written}, after {len(records)} epoch(s)"
    if status == "failed":
        return "failed", str(summary.get("error") or "no error recorded")
    if status == "interrupted":
        return "interrupted", f"stopped after {len(records)} epoch(s)"
    if status == COMPLETED or (status is None and "best_val_acc1" in summary):
        return COMPLETED, ""
    return "crashed", f"summary.json has an unknown status {status!r}"


def load_run(run_dir: Path) -> Run:
    """One run dir: its status, config and metrics, whatever state it was left in."""
    summary_path = run_dir / SUMMARY
    records, metrics_note = read_metrics(run_dir / METRICS_FILE)
    summary: Optional[dict] = None
    if summary_path.is_file():
        try:
            summary = read_json(summary_path)
        except (OSError, ValueError) as ex:
            status, detail = "crashed", f"summary.json is unreadable ({ex})"
        else:
            status, detail = _status_from_summary(summary, summary_path, records)
    elif os.path.lexists(summary_path):
        status, detail = "crashed", "summary.json is not a file"
    elif records:
        status, detail = "crashed", f"no summary.json; stopped after {len(records)} epoch(s)"
    else:
        status, detail = "not started", "no summary.json or metrics.jsonl"

    # Hydra's copy first: every job of a sweep has one, resolved here the same way for all of
    # them (summary.json's copy was resolved in the job's environment, e.g. its MIXTRAIN_DATA).
    config, config_note = _hydra_config(run_dir)
    saved = summary.get("config") if summary else None
    if isinstance(saved, dict):
        # A file cut short still parses: it lacks sections the run had (its options' own keys may differ:
        # model=auto's, resolved into the model it chose, are in summary.json's copy only).
        lacking = set(saved) - set(config)
        if config and lacking:
            config_note = f"{HYDRA}/config.yaml lacks {len(lacking)} section(s) of the run's config (cut short?)"
        if not config or lacking:
            config = saved
            config_note += ": the config of summary.json is used" if config_note else ""
    run = Run(run_dir, status, detail, flatten(config), epochs_done=len(records),
              notes=[note for note in (metrics_note, config_note) if note])
    evaluated = [r for r in records if isinstance(r.get("val_acc1"), (int, float))]
    if evaluated:
        run.last_val_acc1 = float(evaluated[-1]["val_acc1"])
    if summary:
        epochs = summary.get("epochs")
        if isinstance(epochs, (int, float)) and math.isfinite(epochs):  # a hand-edited "three" or 1e999 is no count
            run.epochs_done = max(run.epochs_done, int(epochs))
            if len(records) < epochs and not metrics_note:
                run.notes.append(f"{METRICS_FILE} holds {len(records)} of the {int(epochs)} epoch(s) summary.json "
                                 "counts")
        run.metrics = {m: float(summary[m]) for m in METRICS
                       if isinstance(summary.get(m), (int, float)) and not isinstance(summary.get(m), bool)}
        loggers = summary.get("loggers")
        if isinstance(loggers, dict):
            run.loggers = {k: v for k, v in loggers.items() if isinstance(v, dict)}
    return run

# --------------------------------------------------------------------------- jobs of a sweep that never started


def unstarted_jobs(sweep_dir: Path, started: Sequence[Path]) -> List[Run]:
    """Jobs of a basic-sweeper multirun (``multirun.yaml``) that have no directory.

    A sweep stopped half-way (Ctrl-C, a killed job, a lost node) leaves later jobs with
    no directory at all; this expands the sweep's overrides again to list them.
    """

    path = sweep_dir / MULTIRUN
    if not path.is_file():
        return []
    try:
        hydra = OmegaConf.load(path).hydra
        target = str(OmegaConf.select(hydra, "sweeper._target_", default=""))
        subdir = str(OmegaConf.to_container(hydra.sweep, resolve=False)["subdir"])
        task_overrides = [str(o) for o in hydra.overrides.task]
    except Exception:  # not a multirun.yaml we can read: report the runs that exist
        return []
    # Only the basic sweeper's jobs can be listed in advance (from the command line alone),
    # and only under its default subdir.
    if (not target.endswith("BasicSweeper") or subdir != "${hydra.job.num}"
            or OmegaConf.select(hydra, "sweeper.params", default=None)):
        return []

    try:
        parsed = OverridesParser.create().parse_overrides(task_overrides)
        jobs = sweep_jobs(parsed)
    except Exception:
        return []
    started_names = {p.name for p in started if p.parent == sweep_dir}
    runs = []
    for num, overrides in enumerate(jobs):
        if str(num) not in started_names:
            runs.append(Run(sweep_dir / str(num), "not started", "no job directory: " + " ".join(overrides),
                            params=job_params(overrides)))
    return runs


def job_params(overrides: Sequence[str]) -> Dict[str, Any]:
    """The flattened config a job with these overrides would have run with ({} if it does not compose)."""

    try:
        cfg = compose("train", [o for o in overrides if not o.startswith("hydra")])
        return flatten(OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # the config changed since the sweep ran: keep what the overrides say
        return {override_key(o): _parse_scalar(o.split("=", 1)[1]) for o in overrides if "=" in o}


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def collect(paths: Iterable[Path]) -> List[Run]:
    """Every run under ``paths`` (and every job of a sweep that never started), in a stable order."""
    runs: List[Run] = []
    seen = set()
    for path in paths:
        path = Path(path).expanduser()
        if not path.exists():
            raise MixtrainError(f"{path} does not exist: give run directories or sweep directories (outputs/...)")
        if not path.is_dir():
            raise MixtrainError(f"{path} is not a directory: give run directories or sweep directories")
        path = path.resolve()
        dirs = [d for d in find_run_dirs(path) if d not in seen]
        seen.update(dirs)
        found = [load_run(d) for d in dirs]
        # Sweep dirs at or below PATH (not the sweep around a single run dir that was asked for).
        for sweep_dir in sorted({path, *(d.parent for d in dirs if d != path)}, key=natural_key):
            found += [r for r in unstarted_jobs(sweep_dir, dirs) if r.path not in seen]
        runs += sorted(found, key=lambda r: natural_key(r.path))
    return runs
