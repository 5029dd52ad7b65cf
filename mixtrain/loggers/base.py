"""What a logger is: the few methods a run calls on it, what it is told about the run, and its
registry entry (the ``logger`` group: ``logger=[tensorboard,mlflow]``, ``logger=[]``).

The contract, which a logger of your own keeps too (``logger.<key>._target_=my_pkg.MyLogger``,
built as ``MyLogger(**kwargs)``): every method is optional, and :class:`Logger` is a base class with
each one doing nothing.

- ``start(run, state)``: once, on rank 0, before the first epoch. ``run`` is a :class:`RunInfo`;
  ``state`` is what ``state_dict()`` returned when the checkpoint being resumed was written
  ({} for a new run), so a resumed run continues the same tracker run.
- ``log_step(metrics, step)``: at each sync point (every ``trainer.log_every`` steps and at each
  epoch's end): ``train/loss_running``, ``train/lr_step`` (and ``train/grad_norm`` with clipping
  on); ``step`` counts optimizer steps over the whole run.
- ``log_epoch(record, step)``: each epoch's record, as its ``metrics.jsonl`` line is written
  (``record["epoch"]``; ``val_ci`` is a dict of ``[low, high]``: :func:`scalars` flattens it).
- ``log_image(tag, image, step)``: an ``[H, W, 3]`` uint8 picture (the mixed batch, the
  reliability diagram). A logger without this method is never asked to draw one.
- ``finish(status, summary, artifacts)``: once, however the run ends: ``FINISHED``, ``FAILED`` or
  ``KILLED`` (stopped by a signal; it can be resumed); ``summary`` is ``summary.json``'s content,
  ``artifacts`` the run's files to keep (those that exist).
- ``state_dict()``: kept in every checkpoint (plain values: ids, names).
- ``where()``: a dict saying where the run is, kept in ``summary.json`` under ``loggers``; its
  ``open`` entry (a command or a URL) is printed at the start and by ``mixtrain report``.

A method that raises costs the logger, never the run: the run says so in one warning and goes on
without it; ``metrics.jsonl`` stays the record.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from omegaconf import OmegaConf

from mixtrain.config.registry import Entry, entry_of, options, register
from mixtrain.config.store import flatten
from mixtrain.errors import MixtrainError
from mixtrain.layout import HYDRA, MULTIRUN

# How a run ended, in MLflow's words (its RunStatus): a stop by a signal is KILLED.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


@dataclass
class Sweep:
    """The sweep a run is a job of: its dir (where Hydra wrote ``multirun.yaml``) and job number."""

    dir: Path
    job: int


@dataclass
class RunInfo:
    """What a logger is told at the start of a run."""

    run_dir: Path
    config: Dict[str, Any]  # the resolved config, as summary.json holds it
    overrides: List[str] = field(default_factory=list)  # the command line's overrides (.hydra/overrides.yaml)
    sweep: Optional[Sweep] = None
    history: List[Dict[str, Any]] = field(default_factory=list)  # the epochs done (a resumed run's)
    global_step: int = 0  # optimizer steps done when the checkpoint being resumed was written
    resumed: bool = False
    options: Dict[str, str] = field(default_factory=dict)  # each group's option as chosen (dataset: photos)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def params(self) -> Dict[str, Any]:
        """The config's keys, flattened: ``{"optim.lr": 0.1, ...}``."""
        return flatten(self.config)


class Logger:
    """The contract (see the module's docstring); a logger of your own may subclass it."""

    def start(self, run: RunInfo, state: Dict[str, Any]) -> None: ...

    def log_step(self, metrics: Dict[str, float], step: int) -> None: ...

    def log_epoch(self, record: Dict[str, Any], step: int) -> None: ...

    def finish(self, status: str, summary: Dict[str, Any], artifacts: List[Path]) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def where(self) -> Dict[str, Any]:
        return {}


@dataclass(frozen=True)
class LoggerKind(Entry):
    build: Optional[Callable[[Any, str], Any]] = None  # (its config, its key under `logger`) -> a logger
    package: Optional[str] = None  # the package it needs, imported when the run is set up
    extra: Optional[str] = None  # mixtrain's extra that installs that package
    # (the `where()` of its runs in a report, the report's files) -> lines for `mixtrain report`
    report: Optional[Callable[[List[Dict[str, Any]], List[Path]], List[str]]] = None


def register_logger(name: str, schema: type, build: Callable[[Any, str], Any], package: Optional[str] = None,
                    extra: Optional[str] = None,
                    report: Optional[Callable[[List[Dict[str, Any]], List[Path]], List[str]]] = None) -> LoggerKind:
    """Register a logger: ``logger=<name>`` (alone or in a list) then logs every run to it."""
    return register(LoggerKind("logger", name, schema, build=build, package=package, extra=extra, report=report))


def create_loggers(configs: Dict[str, Any]) -> Dict[str, Any]:
    """The loggers of the ``logger`` group's nodes, by key. A missing package is bad input (one line
    naming the extra), found here, before the run writes anything; its import is paid only here,
    where the logger is chosen."""
    loggers = {}
    for key, cfg in configs.items():
        kind = entry_of("logger", cfg)
        if kind is None:
            raise MixtrainError(f"logger.{key} is not a registered logger: its module must call "
                                "mixtrain.loggers.register_logger (mixtrain/loggers/base.py)")
        if kind.package is not None:
            try:
                importlib.import_module(kind.package)
            except ImportError as ex:
                raise MixtrainError(f"logger={key} needs the {kind.package} package, which cannot be imported "
                                    f"({ex}): pip install \"mixtrain[{kind.extra}]\"") from None
        loggers[key] = kind.build(cfg, key)
    return loggers


def report_lines(wheres: List[Dict[str, Any]], files: List[Path]) -> List[str]:
    """For ``mixtrain report``: where its runs' loggers logged (``summary.json``'s ``loggers``), a few
    lines per kind of logger, as each kind says (its entry's ``report``)."""
    lines: List[str] = []
    for name, kind in options("logger").items():
        mine = [w for w in wheres if w.get("kind") == name]
        if mine and kind.report is not None:
            lines += kind.report(mine, files)
    return lines


def flat_record(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """An epoch record with nested values flattened: ``{"val_ci": {"acc1": [1, 2]}}`` ->
    ``{"val_ci.acc1.0": 1, "val_ci.acc1.1": 2}``; other values as they are."""
    out: Dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat_record(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out.update(flat_record({str(i): v for i, v in enumerate(value)}, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def scalars(record: Dict[str, Any]) -> Dict[str, float]:
    """The numbers of an epoch record, flattened (:func:`flat_record`); NaN stays NaN."""
    return {k: float(v) for k, v in flat_record(record).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sweep_of(run_dir: Path) -> Optional[Sweep]:
    """The sweep ``run_dir`` is a job of, from Hydra's record of the job (``.hydra/hydra.yaml``,
    which a resumed job keeps): None for a single run."""
    try:
        hydra = OmegaConf.load(Path(run_dir) / HYDRA / "hydra.yaml").hydra
        if str(OmegaConf.select(hydra, "mode")) != "MULTIRUN":
            return None
        job = int(OmegaConf.select(hydra, "job.num"))
    except Exception:  # no such file (a run started from Python), or not one Hydra wrote: not a sweep's job
        return None
    for folder in Path(run_dir).resolve().parents:
        if (folder / MULTIRUN).is_file():
            return Sweep(folder, job)
    return None
