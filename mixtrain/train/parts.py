"""The parts of a training run: small classes the :class:`~mixtrain.train.engine.Trainer` calls in order.

Each reads alone: what it does at a sync point, at the end of an epoch (``epoch_end``:
measuring; ``eval_end``: the record is final) and when the run stops.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any, Dict, Optional

import torch

from mixtrain.train import distributed
from mixtrain.evaluate.bootstrap import bootstrap_intervals
from mixtrain.evaluate.calibration import calibratability
from mixtrain.train.engine import Part, Trainer, evaluate
from mixtrain.errors import RunStopped, resume_command
from mixtrain.evaluate.evaluation import LOGITS_FILE, save_logits
from mixtrain.runs.plots import reliability_image, save_reliability_diagram

# --------------------------------------------------------------------------- stopping


# SIGHUP: the terminal or SSH connection that started the run closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP ask the run to stop at the next sync point, with a checkpoint.

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
    """A signal on any rank: every rank stops at the same sync point, after a checkpoint."""

    def __init__(self, request: StopRequest) -> None:
        self.request = request

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        if not stats["stop"]:
            return
        run = trainer.run
        run.save("last.pt")
        signum = self.request.signum or signal.SIGTERM  # only another rank was signalled: torchrun sends SIGTERM
        where = f"at epoch {run.state.epoch}, step {run.state.step}"
        if run.cfg.trainer.checkpoint:
            saved = f"checkpoint {run.run_dir / 'last.pt'}; continue with: {resume_command(run.run_dir)}"
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

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        run = trainer.run
        state, cfg = run.state, run.cfg.trainer
        state.consecutive_skips = int(stats["run"])
        new = int(stats["skipped"])
        if not new:
            return
        state.nan_skips += new
        if run.precision.scaler.is_enabled():
            if stats["longest_run"] > cfg.nan_skip_limit:
                raise RunStopped(f"the fp16 GradScaler skipped more than trainer.nan_skip_limit={cfg.nan_skip_limit} "
                                 f"steps in a row (non-finite gradients, last at epoch {state.epoch}, step "
                                 f"{int(stats['last_bad'])}); lower optim.lr, or use trainer.amp_dtype=bf16")
            return
        if cfg.on_nan == "stop":
            last = run.run_dir / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
            raise RunStopped(f"non-finite loss at epoch {state.epoch} step {int(stats['first_bad'])} "
                             f"(trainer.on_nan=stop); {kept}. Lower optim.lr, or set trainer.on_nan=skip")
        run.monitor.info(f"[yellow]skipped {new} step(s) with a non-finite loss[/] (epoch {state.epoch}, last at step "
                         f"{int(stats['last_bad'])}; {state.nan_skips} of at most {cfg.nan_skip_limit})")
        if state.nan_skips > cfg.nan_skip_limit:
            raise RunStopped(f"more than trainer.nan_skip_limit={cfg.nan_skip_limit} non-finite losses (last at epoch "
                             f"{state.epoch}, step {int(stats['last_bad'])}); lower optim.lr or check the data")


# --------------------------------------------------------------------------- EMA


class Ema(Part):
    """timm's ModelEmaV3 of the model's weights, updated every ``trainer.ema.every`` steps.

    BatchNorm buffers are copied, not averaged (timm's ``exclude_buffers``), so the EMA
    model's statistics are those of the current weights' batches.
    """

    def step_end(self, trainer: Trainer, out) -> None:
        run = trainer.run
        cfg, step = run.cfg.trainer.ema, run.state.global_step
        if step % cfg.every == 0:
            decay = run.ema.get_decay(step // cfg.every) ** cfg.every  # per-step decay over `every` steps
            with torch.no_grad():
                run.ema.apply_update_no_buffers_(run.model, decay)


# --------------------------------------------------------------------------- evaluation


class Evaluation(Part):
    """Clean validation metrics of the weights (and of the EMA weights) every ``eval_every`` epochs."""

    def epoch_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        run = trainer.run
        epoch, cfg = record["epoch"], run.cfg.trainer
        final = epoch + 1 == cfg.epochs
        if (epoch + 1) % cfg.eval_every and not final:
            return
        # Every rank evaluates with rank 0's BatchNorm statistics: those the checkpoint holds.
        distributed.broadcast_buffers(run.model)
        meter = evaluate(run.model, run.data.val, run.precision, keep=True)
        record.update({f"val_{k}": v for k, v in meter.compute().items()})
        # Calibratability (Wang et al. 2023): T fitted on a fixed half of val, ECE/NLL on the other
        # half. Every rank holds all the logits in one order, so every rank fits the same T.
        logits = distributed.gather_in_order([lg for lg, _ in meter.kept])
        labels = distributed.gather_in_order([lb for _, lb in meter.kept])
        record.update({f"val_{k}": v for k, v in calibratability(logits, labels).items()})
        if final:
            record["val_ci"] = bootstrap_intervals(logits, labels) if len(labels) else None
            if run.ctx.is_main:
                save_logits(run.run_dir / LOGITS_FILE, logits, labels)
        if run.ema is not None:
            distributed.broadcast_buffers(run.ema.module)
            record.update({f"ema_val_{k}": v for k, v in evaluate(run.ema.module, run.data.val,
                                                                 run.precision).compute().items()})
        if final and run.monitor.enabled:
            save_reliability_diagram(meter.ece_bins, run.run_dir / "reliability.png", f"epoch {epoch}")
            run.monitor.image("calibration/reliability", reliability_image(meter.ece_bins, f"epoch {epoch}"),
                              run.state.global_step)


# --------------------------------------------------------------------------- checkpoints


# objective -> (epoch record key, higher is better)
SELECTION = {"final_val_acc5": ("val_acc5", True), "final_val_ece": ("val_ece", False),
             "final_val_nll": ("val_nll", False)}


def selection_key(objective: str, ema: bool):
    """The epoch metric that picks best.pt: the objective's, else top-1 (of the EMA weights if asked)."""
    key, higher = SELECTION.get(objective.replace("ema_", ""), ("val_acc1", True))
    return (f"ema_{key}" if ema else key), higher


class Checkpoints(Part):
    """``last.pt`` every epoch (and every ``checkpoint_every_steps`` steps), ``best.pt`` by the
    selection metric, and the ``keep_best`` best epochs as ``epoch-NNN.pt``."""

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        run = trainer.run
        every = run.cfg.trainer.checkpoint_every_steps
        if every and run.state.step % every == 0 and run.state.step < stats["steps"]:
            run.save("last.pt")

    def eval_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        # Checkpoint first, then the metrics line: a crash in between leaves a checkpoint whose
        # history has the line, and resuming writes it (reconcile_metrics).
        run = trainer.run
        state, cfg = run.state, run.cfg
        key, higher = selection_key(cfg.objective, cfg.trainer.ema.select_best and run.ema is not None)
        value = record.get(key)
        is_best = value is not None and not math.isnan(value) and (
            state.best_epoch < 0 or (value > state.best_score if higher else value < state.best_score))
        if is_best:
            state.best_score, state.best_epoch = value, record["epoch"]
        if value is not None and cfg.trainer.keep_best > 1:
            state.kept = sorted([*state.kept, [value, record["epoch"]]], key=lambda x: -x[0] if higher else x[0])
        run.save("last.pt")
        if is_best:
            run.save("best.pt")
        if cfg.trainer.keep_best > 1 and [value, record["epoch"]] in state.kept[:cfg.trainer.keep_best]:
            run.save(f"epoch-{record['epoch']:03d}.pt")
        for _, epoch in state.kept[cfg.trainer.keep_best:]:
            if run.ctx.is_main:
                (run.run_dir / f"epoch-{epoch:03d}.pt").unlink(missing_ok=True)
        del state.kept[cfg.trainer.keep_best:]


# --------------------------------------------------------------------------- records


class Records(Part):
    """What the run reports: progress at sync points, the epoch's line, ``summary.json``."""

    def sync(self, trainer: Trainer, stats: Dict[str, float]) -> None:
        run = trainer.run
        state, monitor = run.state, run.monitor
        loss = stats["loss_sum"] / max(stats["seen"], 1)
        rate = (state.step - trainer.first_step) * run.cfg.trainer.batch_size / max(stats["elapsed"], 1e-9)
        eta = (stats["steps"] - state.step) * run.cfg.trainer.batch_size / max(rate, 1e-9)
        monitor.sync_line(state.epoch, state.step, int(stats["steps"]), loss, rate, eta)
        monitor.scalar("train/loss_running", loss, state.global_step)
        monitor.scalar("train/lr_step", run.optimizer.param_groups[0]["lr"], state.global_step)
        if not math.isnan(stats["grad_norm"]):
            monitor.scalar("train/grad_norm", stats["grad_norm"], state.global_step)

    def eval_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        run = trainer.run
        run.monitor.epoch_end(record, run.state.global_step)
        run.warn_unreadable()
        run.write_status("running")
