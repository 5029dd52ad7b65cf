"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit(cfg, run_dir) -> summary``."""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from mixtrain import checkpoint
from mixtrain.checkpoint import EpochProgress, TrainState
from mixtrain.config import TrainConfig, TrainerConfig, asdict
from mixtrain.data import Data, Loader, build_data
from mixtrain.errors import MixtrainError, RunStopped
from mixtrain.losses import Loss, create_loss
from mixtrain.metrics import ClassificationMeter
from mixtrain.mixing import Mixer, create_mixer
from mixtrain.models import create_model
from mixtrain.monitor import RunMonitor, Throughput, reconcile_metrics, write_json_atomic
from mixtrain.optim import create_optimizer, create_scheduler
from mixtrain.plots import reliability_image, save_reliability_diagram
from mixtrain.preview import mixed_batch_grid


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MixtrainError(f"trainer.device={name} but CUDA is not available: use trainer.device=cpu or auto")
    return device


@dataclass
class Precision:
    """Autocast settings; a GradScaler only for fp16 on CUDA (bf16 needs none)."""

    device_type: str
    dtype: Optional[torch.dtype]  # None: full precision
    scaler: torch.amp.GradScaler

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[self.dtype]


def resolve_precision(cfg: TrainerConfig, device: torch.device) -> Precision:
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.amp_dtype] if amp else None
    if dtype == torch.float16 and device.type != "cuda":
        raise MixtrainError("trainer.amp_dtype=fp16 needs CUDA (it relies on a GradScaler): "
                            "use trainer.amp_dtype=bf16 on the CPU, or trainer.amp=false")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(device.type, dtype, scaler)


# --------------------------------------------------------------------------- one epoch


class NonFiniteLoss(Exception):
    """Raised inside the step loop; ``fit`` turns it into a clean stop."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"non-finite loss at epoch {epoch} step {step}")
        self.epoch, self.step = epoch, step


def train_one_epoch(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: Precision,
    mixer: Mixer,
    loss_fn: Loss,
    epoch: int,
    monitor: Optional[RunMonitor] = None,
    start_step: int = 0,
    progress: Optional[EpochProgress] = None,
    log_every: int = 50,
    skip_non_finite: bool = False,
    after_step: Optional[Callable[[int, bool], None]] = None,
) -> Dict[str, float]:
    """One pass over ``loader`` from ``start_step``; returns mean loss, accuracy against the
    dominant (mixed) target, and img/s.

    ``progress`` holds the epoch's running sums (restored ones when resuming mid-epoch) and
    is kept up to date for checkpoints. A non-finite loss raises :class:`NonFiniteLoss`, or
    with ``skip_non_finite`` skips the update; with an fp16 GradScaler the scaler skips
    such steps itself. ``after_step(step, skipped)`` runs after every batch.
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    device = next(model.parameters()).device
    # Running sums stay on the device; reading them forces a sync, so it is rare.
    loss_sum = torch.tensor(progress.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(progress.correct, dtype=torch.float64, device=device)
    check_finite = not precision.scaler.is_enabled()
    speed = Throughput()
    steps = len(loader)
    bar = monitor.progress(epoch, steps) if monitor else None
    last_refresh = 0.0
    with bar or nullcontext():
        task = bar.add_task("train", total=steps, completed=start_step, status="") if bar else None
        for step, (images, labels) in enumerate(loader.iter_from(start_step), start=start_step):
            with precision.autocast():
                logits, targets = mixer.forward(model, images, labels, epoch)
                loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            skipped = check_finite and not bool(torch.isfinite(loss))  # one sync; the step depends on it
            if skipped and not skip_non_finite:
                raise NonFiniteLoss(epoch, step)
            if not skipped:
                precision.scaler.scale(loss).backward()
                precision.scaler.step(optimizer)
                precision.scaler.update()
                batch = labels.shape[0]
                loss_sum += loss.detach().double() * batch
                correct += logits.detach().argmax(1).eq(targets.argmax(1)).sum()
                progress.seen += batch
                speed.add(batch)
            scheduler.step()  # a skipped batch still counts: the schedule stays aligned to batches
            if monitor and (step + 1) % log_every == 0 and not skipped:
                global_step = epoch * steps + step + 1
                monitor.scalar("train/loss_step", loss.item(), global_step)
                monitor.scalar("train/lr_step", optimizer.param_groups[0]["lr"], global_step)
            if after_step is not None:
                progress.loss_sum, progress.correct = loss_sum.item(), correct.item()
                after_step(step, skipped)
            if bar:
                now = time.monotonic()
                if now - last_refresh > 0.5 or step == steps - 1:
                    last_refresh = now
                    status = f"loss {loss_sum.item() / max(progress.seen, 1):.4f}  {speed.rate:.0f} img/s"
                    bar.update(task, completed=step + 1, status=status)
                else:
                    bar.advance(task)
    progress.loss_sum, progress.correct = loss_sum.item(), correct.item()
    if progress.seen == 0:
        return {"train_loss": float("nan"), "train_acc": float("nan"), "img_per_s": float("nan")}
    return {
        "train_loss": progress.loss_sum / progress.seen,
        "train_acc": 100.0 * progress.correct / progress.seen,
        "img_per_s": speed.rate,
    }


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Loader, precision: Precision) -> ClassificationMeter:
    """Top-1, top-5, NLL and ECE sums on clean (never mixed) data; ``.compute()`` for the values."""
    model.eval()
    meter = ClassificationMeter(device=next(model.parameters()).device)
    for images, labels in loader:
        with precision.autocast():
            logits = model(images)
        meter.update(logits, labels)
    return meter


# --------------------------------------------------------------------------- stopping


class StopRequest:
    """SIGINT / SIGTERM ask the run to stop after the current step, with a checkpoint.

    A second signal stops at once (the default behaviour). Handlers can only be set from
    the main thread; elsewhere (e.g. a launcher's worker thread) signals keep their default.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# --------------------------------------------------------------------------- fit


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def write_status(run_dir: Path, status: str, cfg: TrainConfig, **fields: Any) -> None:
    """``summary.json``: ``running`` (with pid and host, so a dead run can be told apart),
    then ``completed``, ``failed`` or ``interrupted``."""
    write_json_atomic(run_dir / "summary.json", {"status": status, **fields, "pid": os.getpid(),
                                                 "host": socket.gethostname(), "config": asdict(cfg)})


def fit(cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None) -> Dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; return the summary (also written to ``summary.json``).

    Raises :class:`RunStopped` after a clean stop (signal, non-finite loss) and
    :class:`MixtrainError` for bad input; ``summary.json`` says which, in any case.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = checkpoint.load(cfg.resume) if cfg.resume else None
    if saved is None and (run_dir / "metrics.jsonl").exists():
        raise MixtrainError(f"{run_dir} already holds a run: pick another hydra.run.dir, or continue it with resume={run_dir}")

    t_start = time.perf_counter()
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer, device)
    seed_everything(cfg.seed)
    data = build_data(cfg.dataset, cfg.trainer, device, cfg.seed)
    model = create_model(cfg.model, data.num_classes).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(cfg.optim, model)
    scheduler = create_scheduler(cfg.sched, optimizer, len(data.train), cfg.trainer.epochs)
    mixer = create_mixer(cfg.augment, data.num_classes, cfg.trainer.epochs, seed=cfg.seed)
    loss_fn = create_loss(cfg.augment)
    config = asdict(cfg)
    state, history = TrainState(), []
    if saved is not None:
        checkpoint.check_resumable(saved, config, data.num_classes, Path(cfg.resume))
        state, history = checkpoint.restore(saved, model, optimizer, scheduler, precision.scaler, mixer.generator)
        reconcile_metrics(run_dir / "metrics.jsonl", history)
    train_model = torch.compile(model) if cfg.trainer.compile else model

    # On resume, TensorBoard hides what a crashed attempt logged after the checkpoint.
    monitor = monitor or RunMonitor(run_dir, purge_step=state.global_step if saved is not None else None)
    monitor.info(
        f"[bold]mixtrain[/] {cfg.model.name} on {cfg.dataset.name} ({data.train.num_samples} train / "
        f"{data.val.num_samples} val, {data.num_classes} classes) | {device} {precision.name} | "
        f"augment={cfg.augment.name} | run dir {run_dir}"
    )
    warn_unreadable(data, monitor)
    if saved is not None:
        monitor.info(f"resumed from {cfg.resume} at epoch {state.epoch} step {state.step}")
    elif monitor.enabled and mixer.active(0):
        monitor.image("mixing/batch", mixed_batch_grid(data, cfg.augment, cfg.dataset, cfg.trainer.epochs, cfg.seed))

    def save(name: str) -> None:
        if cfg.trainer.checkpoint and monitor.enabled:
            checkpoint.save_atomic(checkpoint.snapshot(model, optimizer, scheduler, precision.scaler, mixer.generator,
                                                       config, data.num_classes, state, history), run_dir / name)

    def partial_summary() -> Dict[str, Any]:
        return summarize(history, state, time.perf_counter() - t_start, data)

    write_status(run_dir, "running", cfg, **partial_summary())
    try:
        with StopRequest() as stop:
            _train_epochs(cfg, run_dir, data, train_model, optimizer, scheduler, precision, mixer, loss_fn,
                          state, history, monitor, save, stop, partial_summary)
    except RunStopped as ex:
        status = "interrupted" if ex.exit_code > 128 else "failed"
        write_status(run_dir, status, cfg, error=str(ex), **partial_summary())
        monitor.close()
        raise
    except BaseException as ex:
        write_status(run_dir, "failed", cfg, error=f"{type(ex).__name__}: {ex}"[:500], **partial_summary())
        monitor.close()
        raise

    summary = {"status": "completed", **partial_summary(), "config": config}
    write_json_atomic(run_dir / "summary.json", summary)
    monitor.info(
        f"done: best val acc {summary['best_val_acc1']:.2f} (epoch {state.best_epoch}), final val acc "
        f"{summary['final_val_acc1']:.2f}, ECE {summary['final_val_ece']:.4f}, NLL {summary['final_val_nll']:.4f} "
        f"in {summary['wall_time_s']:.0f}s | {run_dir / 'summary.json'}"
    )
    monitor.close()
    return summary


def _train_epochs(cfg: TrainConfig, run_dir: Path, data: Data, model: nn.Module, optimizer, scheduler,
                  precision: Precision, mixer: Mixer, loss_fn: Loss, state: TrainState, history: List[dict],
                  monitor: RunMonitor, save: Callable[[str], None], stop: StopRequest,
                  partial_summary: Callable[[], Dict[str, Any]]) -> None:
    trainer = cfg.trainer
    resume_hint = f"continue with: mixtrain train resume={run_dir}"

    def after_step(step: int, skipped: bool) -> None:
        state.step, state.global_step = step + 1, state.global_step + 1
        if skipped:
            state.nan_skips += 1
            monitor.info(f"[yellow]skipped a step with a non-finite loss[/] (epoch {state.epoch}, step {step}; "
                         f"{state.nan_skips} of at most {trainer.nan_skip_limit})")
            if state.nan_skips > trainer.nan_skip_limit:
                raise RunStopped(f"more than trainer.nan_skip_limit={trainer.nan_skip_limit} non-finite losses "
                                 f"(last at epoch {state.epoch}, step {step}); lower optim.lr or check the data")
        if stop.signum is not None:
            save("last.pt")
            name = signal.Signals(stop.signum).name
            raise RunStopped(f"stopped by {name} at epoch {state.epoch}, step {state.step}; checkpoint "
                             f"{run_dir / 'last.pt'}; {resume_hint}", exit_code=128 + stop.signum)
        if trainer.checkpoint_every_steps and state.step % trainer.checkpoint_every_steps == 0:
            save("last.pt")

    for epoch in range(state.epoch, trainer.epochs):
        state.epoch = epoch
        data.train.set_epoch(epoch)
        t_epoch = time.perf_counter()
        try:
            train_stats = train_one_epoch(model, data.train, optimizer, scheduler, precision, mixer, loss_fn, epoch,
                                          monitor, start_step=state.step, progress=state.progress,
                                          log_every=trainer.log_every, skip_non_finite=trainer.on_nan == "skip",
                                          after_step=after_step)
        except NonFiniteLoss as ex:
            kept = f"the last good checkpoint {run_dir / 'last.pt'} is kept" if (run_dir / "last.pt").exists() \
                else "no checkpoint was written yet"
            raise RunStopped(f"{ex} (trainer.on_nan=stop); {kept}. Lower optim.lr, or set trainer.on_nan=skip") from None
        record: Dict[str, Any] = {"epoch": epoch, **train_stats, "lr": optimizer.param_groups[0]["lr"]}
        final = epoch + 1 == trainer.epochs
        if (epoch + 1) % trainer.eval_every == 0 or final:
            meter = evaluate(model, data.val, precision)
            record.update({f"val_{k}": v for k, v in meter.compute().items()})
            if final and monitor.enabled:
                save_reliability_diagram(meter.ece_bins, run_dir / "reliability.png", f"epoch {epoch}")
                monitor.image("calibration/reliability", reliability_image(meter.ece_bins, f"epoch {epoch}"),
                              state.global_step)
        record["epoch_time"] = time.perf_counter() - t_epoch
        history.append(record)
        state.epoch, state.step, state.progress = epoch + 1, 0, EpochProgress()
        is_best = "val_acc1" in record and record["val_acc1"] > state.best_acc1
        if is_best:
            state.best_acc1, state.best_epoch = record["val_acc1"], epoch
        # Checkpoint first, then the metrics line: a crash in between leaves a checkpoint whose
        # history has the line, and resuming writes it (reconcile_metrics).
        save("last.pt")
        if is_best:
            save("best.pt")
        monitor.epoch_end(record, state.global_step)
        warn_unreadable(data, monitor)
        write_status(run_dir, "running", cfg, **partial_summary())


def warn_unreadable(data: Data, monitor: RunMonitor) -> None:
    """Say once per run that unreadable image files are being skipped, with the first few."""
    paths = data.unreadable()
    if paths:
        shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
        monitor.warn_once("unreadable", f"skipping {len(paths)} unreadable image(s) (dataset.on_bad_image=skip): {shown}")


def summarize(history: List[dict], state: TrainState, wall_time: float, data: Data) -> Dict[str, Any]:
    evaluated = [r for r in history if "val_acc1" in r]
    final = evaluated[-1] if evaluated else {}
    rates = [r["img_per_s"] for r in history if not math.isnan(r.get("img_per_s", float("nan")))]
    return {
        "epochs": len(history),
        "best_val_acc1": state.best_acc1 if evaluated else float("nan"),
        "best_epoch": state.best_epoch,
        "final_val_acc1": final.get("val_acc1", float("nan")),
        "final_val_acc5": final.get("val_acc5", float("nan")),
        "final_val_ece": final.get("val_ece", float("nan")),
        "final_val_nll": final.get("val_nll", float("nan")),
        "final_train_loss": history[-1]["train_loss"] if history else float("nan"),
        "wall_time_s": wall_time,
        "img_per_s": sum(rates) / len(rates) if rates else float("nan"),
        "num_classes": data.num_classes,
        "nan_skips": state.nan_skips,
        "unreadable_images": len(data.unreadable()),
    }
