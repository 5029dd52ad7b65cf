"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit(cfg, run_dir) -> summary``."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from mixtrain import checkpoint, distributed
from mixtrain.checkpoint import EpochProgress, TrainState
from mixtrain.config import ManifoldConfig, TrainConfig, asdict
from mixtrain.data import Data, Loader, build_data, image_size
from mixtrain.errors import MixtrainError, RunStopped
from mixtrain.losses import Loss, create_loss
from mixtrain.metrics import ClassificationMeter
from mixtrain.mixing import Mixer, create_mixer
from mixtrain.models import create_model
from mixtrain.files import RUN_FILES, write_json_atomic
from mixtrain.monitor import RunMonitor, Throughput, reconcile_metrics
from mixtrain.optim import create_optimizer, create_scheduler
from mixtrain.plots import reliability_image, save_reliability_diagram
from mixtrain.precision import Precision, resolve_device, resolve_precision
from mixtrain.preview import mixed_batch_grid


# A step the fp16 GradScaler skips does not call optimizer.step(), and the schedule steps
# anyway (it counts batches); torch then warns as if the two calls were out of order.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


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
    after_step: Optional[Callable[[int, bool, bool], None]] = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Dict[str, float]:
    """One pass over ``loader`` from ``start_step``; returns mean loss, accuracy against the
    dominant (mixed) target, and img/s.

    ``progress`` holds the epoch's running sums (restored ones when resuming mid-epoch) and
    is kept up to date for checkpoints. A non-finite loss raises :class:`NonFiniteLoss`, or
    with ``skip_non_finite`` skips the update. With an fp16 GradScaler, a step the scaler
    skips (non-finite gradients) is reported as skipped and left out of the sums. ``after_step(step, skipped, stop)`` runs after every batch; ``stop``
    is ``stop_requested()``. Under torchrun both flags are agreed on by all ranks before
    the backward pass, so that every rank skips, or stops after, the same step.
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    device = next(model.parameters()).device
    # Running sums stay on the device; reading them forces a sync, so it is rare.
    loss_sum = torch.tensor(progress.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(progress.correct, dtype=torch.float64, device=device)
    scaler = precision.scaler
    check_finite = not scaler.is_enabled()  # with fp16 the GradScaler checks the gradients itself
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
            skipped, stop = distributed.any_rank(skipped, stop_requested(), device=device)
            if skipped and not skip_non_finite:
                raise NonFiniteLoss(epoch, step)
            if not skipped:
                scale = scaler.get_scale()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # The scaler lowers its scale exactly when it skipped the step (inf/NaN gradients):
                # that step is counted by the NaN policy and left out of the sums.
                skipped = scaler.is_enabled() and scaler.get_scale() < scale
            if not skipped:
                batch = labels.shape[0]
                loss_sum += loss.detach().double() * batch
                correct += logits.detach().argmax(1).eq(targets.argmax(1)).sum()
                progress.seen += batch
                speed.add(batch)
            scheduler.step()  # a skipped batch still counts: the schedule stays aligned to batches
            if monitor and (step + 1) % log_every == 0:
                global_step = epoch * steps + step + 1
                mean_loss = loss_sum.item() / max(progress.seen, 1)
                if not skipped:
                    monitor.scalar("train/loss_step", loss.item(), global_step)
                    monitor.scalar("train/lr_step", optimizer.param_groups[0]["lr"], global_step)
                eta = (steps - step - 1) * labels.shape[0] / max(speed.rate, 1e-9)
                monitor.step_line(epoch, step + 1, steps, mean_loss, speed.rate, eta)
            if after_step is not None:
                progress.loss_sum, progress.correct = loss_sum.item(), correct.item()
                after_step(step, skipped, stop)
            if bar:
                now = time.monotonic()
                if now - last_refresh > 0.5 or step == steps - 1:
                    last_refresh = now
                    status = f"loss {loss_sum.item() / max(progress.seen, 1):.4f}  {speed.rate:.0f} img/s"
                    bar.update(task, completed=step + 1, status=status)
                else:
                    bar.advance(task)
    progress.loss_sum, progress.correct = loss_sum.item(), correct.item()
    # The epoch's numbers over all ranks: sums, then ratios.
    loss_total, correct_total, seen_total, images = distributed.all_reduce_sum(torch.tensor(
        [progress.loss_sum, progress.correct, float(progress.seen), float(speed.images)], dtype=torch.float64,
        device=device)).tolist()
    if seen_total == 0:
        return {"train_loss": float("nan"), "train_acc": float("nan"), "img_per_s": float("nan")}
    return {
        "train_loss": loss_total / seen_total,
        "train_acc": 100.0 * correct_total / seen_total,
        "img_per_s": images / max(speed.seconds, 1e-9),
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
    # Each rank saw its own shard: add the sums (never average per-rank metrics; ECE is
    # not an average of per-rank ECEs).
    distributed.all_reduce_sum(meter.sums)
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


def fit(cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None) -> Dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; return the summary (also written to ``summary.json``).

    Raises :class:`RunStopped` after a clean stop (signal, non-finite loss) and
    :class:`MixtrainError` for bad input; ``summary.json`` says which, in any case.
    Under torchrun every rank calls it; only rank 0 writes anything.
    """
    return Run(cfg, Path(run_dir), monitor).train()


class Run:
    """One training run: its parts, where it is, and how it saves itself."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.t_start = time.perf_counter()
        ctx = self.ctx = distributed.init(cfg.trainer.device)
        if cfg.trainer.batch_size % ctx.world_size or cfg.trainer.eval_batch_size % ctx.world_size:
            raise MixtrainError(f"trainer.batch_size ({cfg.trainer.batch_size}) and trainer.eval_batch_size "
                                f"({cfg.trainer.eval_batch_size}) are global batches and must divide evenly over "
                                f"{ctx.world_size} processes")
        saved = checkpoint.load(cfg.resume) if cfg.resume else None
        problem = None
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if saved is None and holds_run(run_dir):
                problem = f"{run_dir} already holds a run: pick another hydra.run.dir, or continue it with resume={run_dir}"
        problem = distributed.broadcast_object(problem)  # every rank stops with the same line
        if problem:
            raise MixtrainError(problem)

        self.device = distributed.device_for(ctx, resolve_device(cfg.trainer.device))
        self.precision = resolve_precision(cfg.trainer, self.device)
        seed_everything(cfg.seed, ctx.rank)
        self.data = build_data(cfg.dataset, cfg.trainer, self.device, cfg.seed, ctx.rank, ctx.world_size)
        self.model = create_model(cfg.model, self.data.num_classes).to(self.device)  # the unwrapped model
        if cfg.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = create_optimizer(cfg.optim, self.model)
        self.scheduler = create_scheduler(cfg.sched, self.optimizer, len(self.data.train), cfg.trainer.epochs)
        self.mixer = create_mixer(cfg.augment, self.data.num_classes, cfg.trainer.epochs, cfg.seed, ctx.rank)
        self.loss_fn = create_loss(cfg.augment)
        self.config = asdict(cfg)
        self.state, self.history, self.resume_note = TrainState(), [], None
        if saved is not None:
            self.resume_note = checkpoint.check_resumable(saved, self.config, self.data.num_classes, Path(cfg.resume))
            self.state, self.history = checkpoint.restore(saved, self.model, self.optimizer, self.scheduler,
                                                          self.precision.scaler, self.mixer.generator, ctx.rank,
                                                          ctx.world_size)
            if ctx.is_main:
                reconcile_metrics(run_dir / "metrics.jsonl", self.history)
            if self.resume_note:
                lr_now = saved["optimizer"]["param_groups"][0]["lr"]
                lr_next = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
                self.resume_note += f"; here: lr {lr_now:.4g} -> {lr_next:.4g}"
        # DDP after restoring, so that every rank starts from the same weights.
        self.train_model = distributed.wrap_model(self.model, self.device, cfg.trainer.sync_bn)
        if cfg.trainer.compile:
            self.train_model = torch.compile(self.train_model)
        # On resume, TensorBoard hides what a crashed attempt logged after the checkpoint.
        self.monitor = monitor or RunMonitor(run_dir, enabled=ctx.is_main,
                                             purge_step=self.state.global_step if saved is not None else None)
        self.resumed = saved is not None
        self.stop = StopRequest()

    # ---- records

    def summary(self) -> Dict[str, Any]:
        return summarize(self.history, self.state, time.perf_counter() - self.t_start, self.data,
                         self.cfg.dataset.label_noise)

    def write_status(self, status: str, **fields: Any) -> None:
        """``summary.json``: ``running`` (with pid and host, so a dead run can be told apart),
        then ``completed``, ``failed`` or ``interrupted``."""
        if self.ctx.is_main:
            write_json_atomic(self.run_dir / "summary.json", {
                "status": status, **self.summary(), **fields, "pid": os.getpid(), "host": socket.gethostname(),
                "world_size": self.ctx.world_size, "config": self.config})

    def save(self, name: str) -> None:
        """A checkpoint (every rank takes part: each one's RNG state goes in it; rank 0 writes)."""
        if not self.cfg.trainer.checkpoint:
            return
        ranks = distributed.gather_objects(checkpoint.rank_state(self.mixer.generator, self.state))
        if self.ctx.is_main:
            checkpoint.save_atomic(checkpoint.snapshot(self.model, self.optimizer, self.scheduler,
                                                       self.precision.scaler, self.config, self.data.num_classes,
                                                       self.state, self.history, ranks), self.run_dir / name)

    # ---- training

    def train(self) -> Dict[str, Any]:
        cfg, data, monitor = self.cfg, self.data, self.monitor
        train_size, eval_size = (image_size(cfg.dataset, train) or data.train.height for train in (True, False))
        sizes = f"{train_size} px" if train_size == eval_size else f"train {train_size} px / eval {eval_size} px"
        monitor.info(
            f"[bold]mixtrain[/] {cfg.model.name} on {cfg.dataset.name} ({data.train.num_samples} train / "
            f"{data.val.num_samples} val, {data.num_classes} classes, {sizes}) | {self.device} {self.precision.name}"
            f"{f' x {self.ctx.world_size} processes' if self.ctx.enabled else ''} | augment={cfg.augment.name} | "
            f"run dir {self.run_dir}"
        )
        if data.stored_size and data.stored_size < train_size:
            monitor.warn_once("upscaled", f"every cached image is at most {data.stored_size} px and is upscaled to "
                                          f"dataset.image_size={train_size} ({(train_size / data.stored_size) ** 2:.0f}x "
                                          f"the compute): set dataset.image_size={data.stored_size} to keep their size")
        self.warn_unreadable()
        if self.resumed:
            monitor.info(f"resumed from {cfg.resume} at epoch {self.state.epoch} step {self.state.step}")
            if self.resume_note:
                monitor.info(self.resume_note)
        elif monitor.enabled and self.mixer.active(0) and not isinstance(cfg.augment, ManifoldConfig):
            monitor.image("mixing/batch", mixed_batch_grid(data.train, data.classes, cfg.augment, cfg.dataset,
                                                           cfg.trainer.epochs, cfg.seed))
        self.write_status("running")
        try:
            with StopRequest() as self.stop:
                for epoch in range(self.state.epoch, cfg.trainer.epochs):
                    self.train_epoch(epoch)
        except RunStopped as ex:
            self.write_status("interrupted" if ex.exit_code > 128 else "failed", error=str(ex))
            monitor.close()
            raise
        except BaseException as ex:
            self.write_status("failed", error=f"{type(ex).__name__}: {ex}"[:500])
            monitor.close()
            raise
        digests = distributed.gather_objects(distributed.weights_digest(self.model))
        summary = {"status": "completed", **self.summary(), "world_size": self.ctx.world_size,
                   "ranks_in_sync": len(set(digests)) == 1, "weights_sha256": digests[0], "config": self.config}
        if self.ctx.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        if not summary["ranks_in_sync"]:
            monitor.warn_once("sync", f"the ranks' final weights differ: {digests}")
        monitor.info(
            f"done: best val acc {summary['best_val_acc1']:.2f} (epoch {self.state.best_epoch}), final val acc "
            f"{summary['final_val_acc1']:.2f}, ECE {summary['final_val_ece']:.4f}, NLL {summary['final_val_nll']:.4f} "
            f"in {summary['wall_time_s']:.0f}s | {self.run_dir / 'summary.json'}"
        )
        monitor.close()
        distributed.barrier()  # no rank leaves before rank 0 has written the run's files
        return summary

    def after_step(self, step: int, skipped: bool, stop: bool) -> None:
        state, trainer = self.state, self.cfg.trainer
        state.step, state.global_step = step + 1, state.global_step + 1
        state.consecutive_skips = state.consecutive_skips + 1 if skipped else 0
        if skipped:
            state.nan_skips += 1
            if self.precision.scaler.is_enabled():
                # fp16: the scaler skips a step now and then while it finds its scale; only a
                # run that keeps skipping has diverged.
                if state.consecutive_skips > trainer.nan_skip_limit:
                    raise RunStopped(f"the fp16 GradScaler skipped more than trainer.nan_skip_limit="
                                     f"{trainer.nan_skip_limit} steps in a row (non-finite gradients, last at epoch "
                                     f"{state.epoch}, step {step}); lower optim.lr, or use trainer.amp_dtype=bf16")
            else:
                self.monitor.info(f"[yellow]skipped a step with a non-finite loss[/] (epoch {state.epoch}, step {step}; "
                                  f"{state.nan_skips} of at most {trainer.nan_skip_limit})")
                if state.nan_skips > trainer.nan_skip_limit:
                    raise RunStopped(f"more than trainer.nan_skip_limit={trainer.nan_skip_limit} non-finite losses "
                                     f"(last at epoch {state.epoch}, step {step}); lower optim.lr or check the data")
        if stop:
            self.save("last.pt")
            signum = self.stop.signum or signal.SIGTERM  # only another rank was signalled: torchrun sends SIGTERM
            raise RunStopped(f"stopped by {signal.Signals(signum).name} at epoch {state.epoch}, step {state.step}; "
                             f"checkpoint {self.run_dir / 'last.pt'}; continue with: mixtrain train "
                             f"resume={self.run_dir}", exit_code=128 + signum)
        if trainer.checkpoint_every_steps and state.step % trainer.checkpoint_every_steps == 0:
            self.save("last.pt")

    def train_epoch(self, epoch: int) -> None:
        state, data, monitor, trainer = self.state, self.data, self.monitor, self.cfg.trainer
        state.epoch = epoch
        data.train.set_epoch(epoch)
        t_epoch = time.perf_counter()
        try:
            train_stats = train_one_epoch(
                self.train_model, data.train, self.optimizer, self.scheduler, self.precision, self.mixer,
                self.loss_fn, epoch, monitor, start_step=state.step, progress=state.progress,
                log_every=trainer.log_every, skip_non_finite=trainer.on_nan == "skip", after_step=self.after_step,
                stop_requested=lambda: self.stop.signum is not None)
        except NonFiniteLoss as ex:
            kept = (f"the last good checkpoint {self.run_dir / 'last.pt'} is kept"
                    if (self.run_dir / "last.pt").exists() else "no checkpoint was written yet")
            raise RunStopped(f"{ex} (trainer.on_nan=stop); {kept}. Lower optim.lr, or set trainer.on_nan=skip") from None
        record: Dict[str, Any] = {"epoch": epoch, **train_stats, "lr": self.optimizer.param_groups[0]["lr"]}
        final = epoch + 1 == trainer.epochs
        if (epoch + 1) % trainer.eval_every == 0 or final:
            # Every rank evaluates with rank 0's BatchNorm statistics: those the checkpoint holds.
            distributed.broadcast_buffers(self.model)
            meter = evaluate(self.model, data.val, self.precision)
            record.update({f"val_{k}": v for k, v in meter.compute().items()})
            if final and monitor.enabled:
                save_reliability_diagram(meter.ece_bins, self.run_dir / "reliability.png", f"epoch {epoch}")
                monitor.image("calibration/reliability", reliability_image(meter.ece_bins, f"epoch {epoch}"),
                              state.global_step)
        record["epoch_time"] = time.perf_counter() - t_epoch
        self.history.append(record)
        state.epoch, state.step, state.progress = epoch + 1, 0, EpochProgress()
        is_best = "val_acc1" in record and record["val_acc1"] > state.best_acc1
        if is_best:
            state.best_acc1, state.best_epoch = record["val_acc1"], epoch
        # Checkpoint first, then the metrics line: a crash in between leaves a checkpoint whose
        # history has the line, and resuming writes it (reconcile_metrics).
        self.save("last.pt")
        if is_best:
            self.save("best.pt")
        monitor.epoch_end(record, state.global_step)
        self.warn_unreadable()
        self.write_status("running")

    def warn_unreadable(self) -> None:
        """Say once per run that unreadable image files are being skipped, with the first few."""
        paths = self.data.unreadable()
        if paths:
            shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
            self.monitor.warn_once("unreadable", f"skipping {len(paths)} unreadable image(s) "
                                                 f"(dataset.on_bad_image=skip): {shown}")


def seed_everything(seed: int, rank: int = 0) -> None:
    """The process's global streams (model init, dropout, drop-path) from seed and rank, as timm does.

    Every rank draws its own masks; the initial weights still agree, since DDP broadcasts
    rank 0's. Data order, augmentation and mixing have generators of their own.
    """
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


def holds_run(run_dir: Path) -> bool:
    """Whether a run has written into ``run_dir`` (even one whose first epoch crashed)."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def summarize(history: List[dict], state: TrainState, wall_time: float, data: Data,
              label_noise: float = 0.0) -> Dict[str, Any]:
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
        "label_noise": label_noise,
        "labels_changed": data.labels_changed,
    }
