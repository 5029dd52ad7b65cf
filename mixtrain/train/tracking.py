"""The run's loggers (the ``logger`` group) as one part: what they are told, and when.

Each logger (:mod:`mixtrain.loggers`) gets the step scalars at every sync point (before a signal
stops the run there), each epoch's record once evaluation has filled it, the run's pictures, and how
the run ended. Their states (a tracker's run id) go into every checkpoint under this part's name, so
a resumed run continues the same tracker runs, whose steps after the checkpoint it logs again (each
tracker keeps one value a step: MLflow's logger skips the steps its run has, TensorBoard hides the
killed attempt's, W&B keeps its steps increasing). A logger that raises is dropped with one warning and
the run goes on: ``metrics.jsonl`` stays the record. Only rank 0 has loggers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

from mixtrain import layout
from mixtrain.loggers import RunInfo
from mixtrain.train.engine import Part, Trainer
from mixtrain.train.monitor import RunMonitor


class Loggers(Part):
    """The chosen loggers, by their key under ``logger``; each one's calls begin at :meth:`start`."""

    name = "loggers"

    def __init__(self, loggers: Dict[str, Any], monitor: RunMonitor) -> None:
        self.chosen, self.monitor = dict(loggers), monitor
        self.live: Dict[str, Any] = {}  # started and not failed
        self.saved: Dict[str, Dict[str, Any]] = {}  # each one's state from the checkpoint, then its latest

    @property
    def wants_images(self) -> bool:
        """Whether a live logger draws pictures (only then is one made)."""
        return any(callable(getattr(logger, "log_image", None)) for logger in self.live.values())

    def start(self, run: RunInfo) -> None:
        """Start each logger (a resumed one with its state from the checkpoint)."""
        for key, logger in self.chosen.items():
            self.live[key] = logger
            self.call(key, "start", run, dict(self.saved.get(key, {})))

    def announce(self) -> None:
        """One line per logger: where to see the run (a command or a URL)."""
        for key, where in self.where().items():
            if where.get("open"):
                self.monitor.info(f"logger {key}: {where['open']}")

    def call(self, key: str, method: str, *args) -> None:
        """``logger.<method>(*args)`` if it has the method; a failure drops it, with one warning."""
        logger = self.live.get(key)
        function = getattr(logger, method, None)
        if function is None:
            return
        try:
            function(*args)
        except Exception as ex:  # any failure of a tracker (its server, its package, a user's class)
            if method != "start":  # one that never started keeps the state it had (its run to continue)
                self.remember(key)
            del self.live[key]
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:300]
            self.monitor.warn_once(f"logger.{key}", f"logger {key} failed in {method} ({type(ex).__name__}: "
                                                    f"{first}); training goes on without it, and "
                                                    f"{layout.METRICS} keeps every epoch")

    def each(self, method: str, *args) -> None:
        for key in list(self.live):
            self.call(key, method, *args)

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        if not self.live:
            return
        metrics = {"train/loss_running": stats["loss_sum"] / max(stats["seen"], 1),
                   "train/lr_step": trainer.schedule.lr()}
        if not math.isnan(stats["grad_norm"]):
            metrics["train/grad_norm"] = stats["grad_norm"]
        self.each("log_step", metrics, trainer.state.global_step)

    def eval_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        self.each("log_epoch", record, trainer.state.global_step)

    def image(self, tag: str, image, step: int = 0) -> None:
        self.each("log_image", tag, image, step)

    def finish(self, status: str, summary: Dict[str, Any], run_dir: Path) -> None:
        """How the run ended, with its files to keep; then no logger is called again."""
        files = [run_dir / name for name in (layout.SUMMARY, layout.METRICS, layout.RELIABILITY, layout.TRAIN_LOG)]
        self.each("finish", status, summary, [path for path in files if path.is_file()])
        for key in list(self.live):
            self.remember(key)
        self.live.clear()

    def remember(self, key: str) -> None:
        """Keep a logger's latest state: one that failed or finished still has a tracker run to continue."""
        state = getattr(self.live.get(key), "state_dict", None)
        if state is not None:
            try:
                self.saved[key] = dict(state())
            except Exception:  # a logger that cannot say its state keeps the one it had
                pass

    def where(self) -> Dict[str, Dict[str, Any]]:
        """Where each live logger logs (``summary.json``'s ``loggers``)."""
        found: Dict[str, Dict[str, Any]] = {}
        for key, logger in self.live.items():
            try:
                found[key] = dict(logger.where()) if hasattr(logger, "where") else {}
            except Exception:  # only a description: a logger that cannot give one is still a logger
                found[key] = {}
        return found

    def state_dict(self) -> Dict[str, Any]:
        for key in self.live:
            self.remember(key)
        return dict(self.saved)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.saved = {key: dict(value) for key, value in state.items()}
