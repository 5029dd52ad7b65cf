"""``logger=tensorboard`` (the default): TensorBoard event files in the run dir's ``tb/``.

Step scalars under their names (``train/loss_running``, ...), each epoch's numbers as
``train/loss``, ``val/acc1``, ... (x = optimizer steps), the mixed batch and the reliability
diagram as images, and on completion the run's hyperparameters beside its final metrics for the
HParams tab (``tensorboard --logdir <sweep dir>`` lines a sweep's jobs up there, one row each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from mixtrain import layout
from mixtrain.config.overrides import override_key
from mixtrain.loggers.base import FINISHED, Logger, RunInfo, finite, register_logger, scalars


@dataclass
class TensorBoardConfig:
    """TensorBoard event files in the run dir's tb/ (the default logger)."""

    name: str = "tensorboard"  # the kind of logger (a node of the logger group is read by it)


# What TensorBoard's HParams tab shows of every run, beside each key set on its command line.
HPARAMS = ("dataset.name", "model.name", "augment.name", "augment.alpha", "augment.mode", "optim.name", "optim.lr",
           "sched.name", "trainer.epochs", "trainer.batch_size", "seed")


def hparams(params: Dict[str, Any], overrides: List[str], options: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The run's hyperparameters for TensorBoard: the option of each group (``dataset``: ``photos``),
    :data:`HPARAMS` and the keys of its overrides (a sweep's swept keys), as numbers, strings or booleans."""
    params = {**params, **(options or {})}
    keys = [*(options or {}), *HPARAMS]
    for key in map(override_key, overrides):
        if key in params and key not in keys:
            keys.append(key)
    return {k: params[k] if isinstance(params[k], (bool, int, float, str)) else str(params[k]) for k in keys
            if k in params}


class TensorBoardLogger(Logger):
    def __init__(self, cfg: TensorBoardConfig) -> None:
        self.cfg, self.writer, self.run = cfg, None, None

    def start(self, run: RunInfo, state: Dict[str, Any]) -> None:
        # torch's SummaryWriter imports tensorboard (0.4 s): only when this logger is chosen
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        # On resume, TensorBoard hides what a killed attempt logged after the checkpoint's step: the
        # resumed run logs those steps again. What it logged at that step (just after the checkpoint
        # was written: the epoch's record, the sync's scalars) stays; the resumed run never logs it.
        self.writer = SummaryWriter(log_dir=str(run.run_dir / layout.TENSORBOARD),
                                    purge_step=run.global_step + 1 if run.resumed else None)

    def log_step(self, metrics: Dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, record: Dict[str, Any], step: int) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key.replace("_", "/", 1), value, step)
        self.writer.flush()

    def log_image(self, tag: str, image, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def finish(self, status: str, summary: Dict[str, Any], artifacts: List[Path]) -> None:
        if status == FINISHED:
            metrics = {f"hparam/{k}": summary[k] for k in layout.OBJECTIVES if finite(summary.get(k))}
            self.writer.add_hparams(hparams(self.run.params, self.run.overrides, self.run.options), metrics,
                                    run_name=".")
        self.writer.close()

    def where(self) -> Dict[str, Any]:
        logdir = self.run.run_dir / layout.TENSORBOARD
        return {"kind": "tensorboard", "logdir": str(logdir), "open": f"tensorboard --logdir {logdir}"}


def report_lines(wheres: List[Dict[str, Any]], files: List[Path]) -> List[str]:
    """For ``mixtrain report``: one TensorBoard over every run (its HParams tab lines them up)."""
    logdirs = [w["logdir"] for w in wheres if w.get("logdir")]
    if not logdirs:
        return []
    top = os.path.commonpath(logdirs) if len(logdirs) > 1 else logdirs[0]
    return [f"TensorBoard: {len(logdirs)} run(s): tensorboard --logdir {top}"]


register_logger("tensorboard", TensorBoardConfig, lambda cfg, key: TensorBoardLogger(cfg), report=report_lines)
