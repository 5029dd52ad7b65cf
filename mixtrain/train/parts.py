"""The parts of a training run: small classes the :class:`~mixtrain.train.engine.Trainer` calls in order.

Each reads alone: it is made with what it needs, keeps its own state (and gives it to the
checkpoint), and acts at a sync point, at the end of an epoch (``epoch_end``: measuring;
``eval_end``: the record is final) or when the run stops.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from mixtrain import layout
from mixtrain.artifacts.logits import save_logits
from mixtrain.config import TrainerConfig
from mixtrain.errors import RunStopped, resume_command
from mixtrain.evaluate.bootstrap import bootstrap_intervals
from mixtrain.evaluate.calibration import calibratability
from mixtrain.evaluate.reliability import reliability_image, save_reliability_diagram
from mixtrain.runtime import distributed
from mixtrain.runtime.precision import Precision
from mixtrain.train.engine import Part, Trainer, evaluate
from mixtrain.train.monitor import RunMonitor
from mixtrain.train.tracking import Loggers

Save = Callable[[str], None]  # write the checkpoint of this name into the run dir (every rank calls it)

# --------------------------------------------------------------------------- stopping

# SIGHUP: the terminal or SSH connection that started the run closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP ask the run to stop after the step in progress, with a checkpoint
    (the handler only sets a flag, which the trainer looks at after every step).

    A second signal stops at once, as an interruption (exit 128 + signal, ``interrupted``), without
    a new checkpoint. Handlers can only be set from the main thread; elsewhere (e.g. a launcher's
    worker thread) signals keep their default.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self.__exit__()
            raise RunStopped(f"stopped at once by a second {signal.Signals(signum).name}; the last checkpoint is "
                             "kept", exit_code=128 + signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __call__(self) -> bool:
        return self.signum is not None


class StopOnSignal(Part):
    """A signal on any rank: every rank stops at the same sync point (the trainer makes one after the
    step in progress), after a checkpoint."""

    name = "stop"

    def __init__(self, request: StopRequest, save: Save, run_dir: Path, checkpoints: bool) -> None:
        self.request, self.save, self.run_dir, self.checkpoints = request, save, run_dir, checkpoints

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        if not stats["stop"]:
            return
        self.save(layout.LAST)
        signum = self.request.signum or signal.SIGTERM  # only another rank was signalled: torchrun sends SIGTERM
        where = f"at epoch {trainer.state.epoch}, step {trainer.state.step}"
        if self.checkpoints:
            saved = f"checkpoint {self.run_dir / layout.LAST}; continue with: {resume_command(self.run_dir)}"
        else:
            saved = "no checkpoint (trainer.checkpoint=false): this run cannot be continued"
        raise RunStopped(f"stopped by {signal.Signals(signum).name} {where}; {saved}", exit_code=128 + signum)


# --------------------------------------------------------------------------- non-finite losses


class NanPolicy(Part):
    """Steps whose loss or gradients were not finite (guarded on the device, seen at sync points).

    fp32 / bf16: ``trainer.on_nan=stop`` stops at the first one, ``skip`` counts them and
    stops past ``nan_skip_limit``. fp16: the GradScaler skips steps while it finds its
    scale; only more than ``nan_skip_limit`` in a row stop the run.
    """

    name = "nan_policy"

    def __init__(self, cfg: TrainerConfig, precision: Precision, last_checkpoint: Path, monitor: RunMonitor) -> None:
        self.cfg, self.precision, self.last_checkpoint, self.monitor = cfg, precision, last_checkpoint, monitor
        self.skips = 0  # steps skipped over the whole run

    def state_dict(self) -> Dict[str, Any]:
        return {"skips": self.skips}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.skips = int(state.get("skips", 0))

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        new, epoch, cfg = int(stats["skipped"]), trainer.state.epoch, self.cfg
        if not new:
            return
        self.skips += new
        if self.precision.scaler.is_enabled():
            if stats["longest_run"] > cfg.nan_skip_limit:
                raise RunStopped(f"the fp16 GradScaler skipped more than trainer.nan_skip_limit={cfg.nan_skip_limit} "
                                 f"steps in a row (non-finite gradients, last at epoch {epoch}, step "
                                 f"{int(stats['last_bad'])}); lower optim.lr, or use trainer.amp_dtype=bf16")
            return
        if cfg.on_nan == "stop":
            last = self.last_checkpoint
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
            raise RunStopped(f"non-finite loss at epoch {epoch} step {int(stats['first_bad'])} "
                             f"(trainer.on_nan=stop); {kept}. Lower optim.lr, or set trainer.on_nan=skip")
        self.monitor.info(f"[yellow]skipped {new} step(s) with a non-finite loss[/] (epoch {epoch}, last at step "
                          f"{int(stats['last_bad'])}; {self.skips} of at most {cfg.nan_skip_limit})")
        if self.skips > cfg.nan_skip_limit:
            raise RunStopped(f"more than trainer.nan_skip_limit={cfg.nan_skip_limit} non-finite losses (last at epoch "
                             f"{epoch}, step {int(stats['last_bad'])}); lower optim.lr or check the data")


# --------------------------------------------------------------------------- EMA


class Ema(Part):
    """timm's ModelEmaV3 of the model's weights, updated every ``trainer.ema.every`` steps.

    BatchNorm buffers are copied, not averaged (timm's ``exclude_buffers``), so the EMA
    model's statistics are those of the current weights' batches. Its weights are the
    checkpoint's ``ema`` entry (what ``mixtrain eval weights=ema`` loads).
    """

    name = "ema"

    def __init__(self, ema, model: nn.Module, every: int) -> None:
        self.ema, self.model, self.every = ema, model, every

    def step_end(self, trainer: Trainer, out) -> None:
        step = trainer.state.global_step
        if step % self.every == 0:
            decay = self.ema.get_decay(step // self.every) ** self.every  # per-step decay over `every` steps
            with torch.no_grad():
                self.ema.apply_update_no_buffers_(self.model, decay)


# --------------------------------------------------------------------------- evaluation


class Evaluation(Part):
    """Clean validation metrics of the weights (and of the EMA weights) every ``eval_every`` epochs."""

    name = "evaluation"

    def __init__(self, model: nn.Module, ema_model: Optional[nn.Module], val, precision: Precision, run_dir: Path,
                 loggers: Loggers, epochs: int, eval_every: int) -> None:
        self.model, self.ema_model, self.val, self.precision = model, ema_model, val, precision
        self.run_dir, self.loggers, self.epochs, self.eval_every = run_dir, loggers, epochs, eval_every

    def epoch_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        epoch = record["epoch"]
        final = epoch + 1 == self.epochs or trainer.done  # the run's last epoch, however it got there
        if (epoch + 1) % self.eval_every and not final:
            return
        # Every rank evaluates with rank 0's BatchNorm statistics: those the checkpoint holds.
        distributed.broadcast_buffers(self.model)
        meter = evaluate(self.model, self.val, self.precision, keep=True)
        record.update({f"val_{k}": v for k, v in meter.compute().items()})
        # Calibratability (Wang et al. 2023): T fitted on a fixed half of val, ECE/NLL on the other
        # half. Every rank holds all the logits in one order, so every rank fits the same T.
        logits = distributed.gather_in_order([lg for lg, _ in meter.kept])
        labels = distributed.gather_in_order([lb for _, lb in meter.kept])
        record.update({f"val_{k}": v for k, v in calibratability(logits, labels).items()})
        main = distributed.context().is_main
        if final:
            record["val_ci"] = bootstrap_intervals(logits, labels) if len(labels) else None
            if main:
                save_logits(self.run_dir / layout.LOGITS, logits, labels)
        if self.ema_model is not None:
            distributed.broadcast_buffers(self.ema_model)
            record.update({f"ema_val_{k}": v for k, v in evaluate(self.ema_model, self.val,
                                                                 self.precision).compute().items()})
        if final and main:
            save_reliability_diagram(meter.ece_bins, self.run_dir / layout.RELIABILITY, f"epoch {epoch}")
            if self.loggers.wants_images:
                self.loggers.image("calibration/reliability", reliability_image(meter.ece_bins, f"epoch {epoch}"),
                                   trainer.state.global_step)


# --------------------------------------------------------------------------- checkpoints


# objective -> (epoch record key, higher is better)
SELECTION = {"final_val_acc5": ("val_acc5", True), "final_val_ece": ("val_ece", False),
             "final_val_nll": ("val_nll", False)}


def selection_key(objective: str, ema: bool):
    """The epoch metric that picks best.pt: the objective's, else top-1; of the EMA weights with
    ``trainer.ema.select_best`` or an EMA objective (``best_ema_val_acc1``, ...)."""
    key, higher = SELECTION.get(objective.replace("ema_", ""), ("val_acc1", True))
    return (f"ema_{key}" if ema or "ema_" in objective else key), higher


class Checkpoints(Part):
    """``last.pt`` every epoch (and every ``checkpoint_every_steps`` steps), ``best.pt`` by the
    selection metric, and the ``keep_best`` best epochs as ``epoch-NNN.pt``."""

    name = "checkpoints"

    def __init__(self, save: Save, run_dir: Path, objective: str, select_ema: bool, keep_best: int,
                 every_steps: Optional[int]) -> None:
        self.save, self.run_dir, self.keep_best, self.every_steps = save, run_dir, keep_best, every_steps
        self.key, self.higher = selection_key(objective, select_ema)
        self.best_score, self.best_epoch = math.nan, -1
        self.kept: List[List[float]] = []  # [score, epoch] of the keep_best checkpoints, best first

    def state_dict(self) -> Dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "kept": self.kept}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best_score = state.get("best_score", math.nan)
        self.best_epoch = state.get("best_epoch", -1)
        self.kept = [list(k) for k in state.get("kept", [])]

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        step = trainer.state.step
        if self.every_steps and step % self.every_steps == 0 and step < stats["steps"]:
            self.save(layout.LAST)

    def eval_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        # Checkpoint first, then the metrics line: a crash in between leaves a checkpoint whose
        # history has the line, and resuming writes it (reconcile_metrics).
        value, epoch = record.get(self.key), record["epoch"]
        is_best = value is not None and not math.isnan(value) and (
            self.best_epoch < 0 or (value > self.best_score if self.higher else value < self.best_score))
        if is_best:
            self.best_score, self.best_epoch = value, epoch
        if value is not None and self.keep_best > 1:
            self.kept = sorted([*self.kept, [value, epoch]], key=lambda x: -x[0] if self.higher else x[0])
        self.save(layout.LAST)
        if is_best:
            self.save(layout.BEST)
        if self.keep_best > 1 and [value, epoch] in self.kept[:self.keep_best]:
            self.save(layout.epoch_checkpoint(epoch))
        for _, dropped in self.kept[self.keep_best:]:
            if distributed.context().is_main:
                (self.run_dir / layout.epoch_checkpoint(dropped)).unlink(missing_ok=True)
        del self.kept[self.keep_best:]


# --------------------------------------------------------------------------- records


class Records(Part):
    """What the run reports: the progress bar and lines at sync points, the epoch's line, the status
    (trackers: :class:`~mixtrain.train.tracking.Loggers`)."""

    name = "records"

    def __init__(self, monitor: RunMonitor, batch_size: int, report: Callable[[], None]) -> None:
        self.monitor, self.batch_size, self.report = monitor, batch_size, report

    def epoch_start(self, trainer: Trainer, steps: int) -> None:
        self.monitor.start_progress(trainer.state.epoch, steps, trainer.state.step)

    def step_end(self, trainer: Trainer, out) -> None:
        self.monitor.advance()

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        state, monitor = trainer.state, self.monitor
        loss = stats["loss_sum"] / max(stats["seen"], 1)
        rate = (state.step - trainer.first_step) * self.batch_size / max(stats["elapsed"], 1e-9)
        eta = (stats["steps"] - state.step) * self.batch_size / max(rate, 1e-9)
        monitor.sync_line(state.epoch, state.step, int(stats["steps"]), loss, rate, eta)
        if state.step == stats["steps"]:  # the epoch's last sync: its bar goes before evaluation
            monitor.stop_progress()

    def eval_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        self.monitor.epoch_end(record)
        self.report()  # summary.json says running, with this epoch; unreadable files, once

    def stop(self, trainer: Trainer, error: Optional[BaseException]) -> None:
        self.monitor.stop_progress()
