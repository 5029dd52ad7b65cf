"""A training run assembled from its config: data, model, optimizer, schedule, mixing, parts.

:class:`Training` builds everything ``fit`` needs (restoring it from a checkpoint when
resuming), saves and reports the run, and hands the loop to the
:class:`~mixtrain.train.engine.Trainer` with its parts.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from mixtrain import layout
from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.checkpoint import TrainState
from mixtrain.config import MixConfig, TrainConfig, asdict
from mixtrain.config.overrides import saved_overrides
from mixtrain.data import Data, build_data
from mixtrain.errors import MixtrainError, RunStopped, resume_command
from mixtrain.files import write_json_atomic
from mixtrain.loggers import FAILED, FINISHED, KILLED, RunInfo, create_loggers, sweep_of
from mixtrain.mixing import create_mixer, method_of, target_entropy
from mixtrain.mixing.losses import create_loss
from mixtrain.mixing.preview import mixed_batch_grid
from mixtrain.models import create_model
from mixtrain.runtime import distributed
from mixtrain.runtime.precision import resolve_device, resolve_precision
from mixtrain.train.engine import Step, Trainer
from mixtrain.train.monitor import RunMonitor, reconcile_metrics
from mixtrain.train.optim import create_optimizer, create_scheduler, scaled_lr
from mixtrain.train.parts import Checkpoints, Ema, Evaluation, NanPolicy, Records, StopOnSignal, StopRequest
from mixtrain.train.tracking import Loggers


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
    return any((run_dir / name).exists() for name in layout.RUN_FILES)


class Training:
    """One training run: its parts, where it is, and how it saves and reports itself."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None) -> None:
        self.cfg, self.run_dir, self.t_start = cfg, run_dir, time.perf_counter()
        ctx = self.ctx = distributed.init(cfg.trainer.device)
        trainer = cfg.trainer
        if trainer.batch_size % ctx.world_size or trainer.eval_batch_size % ctx.world_size:
            raise MixtrainError(f"trainer.batch_size ({trainer.batch_size}) and trainer.eval_batch_size "
                                f"({trainer.eval_batch_size}) are global batches and must divide evenly over "
                                f"{ctx.world_size} processes")
        saved = checkpoint.load(cfg.resume) if cfg.resume else None
        problem, loggers = None, {}
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if saved is None and holds_run(run_dir):
                problem = f"{run_dir} already holds a run: pick another hydra.run.dir, or continue it with {resume_command(run_dir)}"
            try:
                loggers = create_loggers(cfg.logger)  # only rank 0 logs
            except MixtrainError as ex:
                problem = problem or str(ex)
        problem = distributed.broadcast_object(problem)  # every rank stops with the same line
        if problem:
            raise MixtrainError(problem)

        self.device = distributed.device_for(ctx, resolve_device(trainer.device))
        self.precision = resolve_precision(trainer, self.device)
        seed_everything(cfg.seed, ctx.rank)
        self.data: Data = build_data(cfg.dataset, trainer, self.device, cfg.seed, ctx.rank, ctx.world_size)
        self.model = create_model(cfg.model, self.data.num_classes).to(self.device)  # the unwrapped model
        if trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.lr = scaled_lr(cfg.optim, trainer.batch_size)
        self.optimizer = create_optimizer(cfg.optim, self.model, self.lr)
        steps = len(self.data.train) if cfg.sched.step_on == "update" else 1
        self.scheduler = create_scheduler(cfg.sched, self.optimizer, steps, trainer.epochs)
        self.mixer = create_mixer(cfg.augment, self.data.num_classes, trainer.epochs, cfg.seed, ctx.rank)
        self.step = Step(self.optimizer, self.precision, self.mixer, create_loss(cfg.augment), trainer.accum_steps,
                         trainer.clip_grad, trainer.clip_value)
        self.ema = None
        if trainer.ema.enabled:
            from timm.utils import ModelEmaV3  # timm's model registry (0.6 s): only with EMA on

            self.ema = ModelEmaV3(self.model, decay=trainer.ema.decay, use_warmup=trainer.ema.warmup,
                                  exclude_buffers=True)
        self.config = asdict(cfg)
        self.state, self.history, self.resume_note, self.wall_before = TrainState(), [], None, 0.0
        saved_parts: Dict[str, Dict[str, Any]] = {}
        if saved is not None:
            self.resume_note = checkpoint.check_resumable(saved, self.config, self.data.classes, Path(cfg.resume),
                                                          self.data.train.num_samples, self.loader_order())
            self.state, self.history = checkpoint.restore(saved, self.stateful(), self.mixer, ctx.rank,
                                                          ctx.world_size)
            saved_parts = checkpoint.part_states(saved)
            self.wall_before = self.state.wall_time
            if ctx.is_main:
                reconcile_metrics(run_dir / layout.METRICS, self.history)
            if self.resume_note:
                lr_next = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
                self.resume_note += f"; here: lr {saved['optimizer']['param_groups'][0]['lr']:.4g} -> {lr_next:.4g}"
        # DDP after restoring, so that every rank starts from the same weights.
        self.train_model = distributed.wrap_model(self.model, self.device, trainer.sync_bn)
        if trainer.compile:
            self.train_model = torch.compile(self.train_model)
        self.monitor = monitor or RunMonitor(run_dir, enabled=ctx.is_main)
        self.loggers = Loggers(loggers, self.monitor)
        if self.ema is not None:
            self.monitor.optional_columns.add("ema_val_acc1")
        self.resumed = saved is not None
        self.stop = StopRequest()
        self.parts = self.make_parts()
        for part in self.parts:
            part.load_state_dict(saved_parts.get(part.name, {}))

    def loader_order(self) -> Optional[Dict[str, Any]]:
        """What the training loader's order depends on beyond the config, if anything (shards: the workers)."""
        order = getattr(self.data.train, "order", None)
        return order() if order is not None else None

    def wall_time(self) -> float:
        """Seconds of this run so far, the processes before a resume included (up to their checkpoint)."""
        return self.wall_before + time.perf_counter() - self.t_start

    def stateful(self) -> Dict[str, Any]:
        """The objects a checkpoint holds the state of, by name."""
        objects = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                   "scaler": self.precision.scaler}
        if self.ema is not None:
            objects["ema"] = self.ema.module
        return objects

    # ---- records

    def summary(self) -> Dict[str, Any]:
        return summarize(self.history, self.checkpoints.best_epoch, self.nan_policy.skips, self.wall_time(), self.data,
                         self.cfg.dataset.label_noise)

    def write_status(self, status: str, **fields: Any) -> None:
        """``summary.json``: ``running`` (with pid and host, so a dead run can be told apart),
        then ``completed``, ``failed`` or ``interrupted``."""
        if self.ctx.is_main:
            write_summary(self.run_dir / layout.SUMMARY, {
                "status": status, **self.summary(), **fields, "pid": os.getpid(), "host": socket.gethostname(),
                "world_size": self.ctx.world_size, "loggers": self.loggers.where(), "config": self.config})

    def save(self, name: str) -> None:
        """A checkpoint (every rank takes part: each one's RNG state goes in it; rank 0 writes)."""
        if not self.cfg.trainer.checkpoint:
            return
        self.state.wall_time = self.wall_time()
        ranks = distributed.gather_objects(checkpoint.rank_state(self.mixer, self.state))
        if self.ctx.is_main:
            path = self.run_dir / name
            try:
                parts = {part.name: part.state_dict() for part in self.parts}
                checkpoint.save_atomic(checkpoint.snapshot(self.stateful(), self.config, self.data.classes,
                                                           self.state, self.history, ranks, parts,
                                                           self.data.train.num_samples, self.loader_order()), path)
            except OSError as ex:  # a full disk, a dir made read-only under the run, ...
                kept = f"; continue from the last one with {resume_command(self.run_dir)}" \
                    if (self.run_dir / layout.LAST).is_file() else ""
                raise RunStopped(f"cannot write the checkpoint {path} ({ex.strerror or ex}): free space or fix the "
                                 f"dir's permissions{kept}") from None

    def warn_unreadable(self) -> None:
        """Say once per run that unreadable image files are being skipped, with the first few."""
        paths = self.data.unreadable()
        if paths:
            shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
            self.monitor.warn_once("unreadable", f"skipping {len(paths)} unreadable image(s) "
                                                 f"(dataset.on_bad_image=skip): {shown}")

    def introduce(self) -> None:
        """The run's first lines: what trains on what, at which sizes and precision, and any warning."""
        cfg, data, monitor = self.cfg, self.data, self.monitor
        train_size, eval_size = (cfg.dataset.size(train) or data.train.height for train in (True, False))
        sizes = f"{train_size} px" if train_size == eval_size else f"train {train_size} px / eval {eval_size} px"
        lr = f"lr {self.lr:.4g}"
        if cfg.optim.lr_base_batch:
            lr += f" (optim.lr {cfg.optim.lr:g} x {cfg.trainer.batch_size}/{cfg.optim.lr_base_batch})"
        monitor.info(
            f"[bold]mixtrain[/] {cfg.model.name} on {cfg.dataset.name} ({data.train.num_samples} train / "
            f"{data.val.num_samples} val, {data.num_classes} classes, {sizes}) | {self.device} {self.precision.name}"
            f"{f' x {self.ctx.world_size} processes' if self.ctx.enabled else ''} | augment={cfg.augment.name} | "
            f"{lr} | run dir {self.run_dir}"
        )
        if self.precision.warning:
            monitor.warn_once("precision", self.precision.warning)
        if data.stored_size and data.stored_size < train_size:
            monitor.warn_once("upscaled", f"every cached image is at most {data.stored_size} px and is upscaled to "
                                          f"dataset.image_size={train_size} ({(train_size / data.stored_size) ** 2:.0f}x "
                                          f"the compute): set dataset.image_size={data.stored_size} to keep their size")
        for note in data.notes:
            monitor.info(note)
        self.warn_stacked_smoothing()
        self.warn_unreadable()
        if self.resumed:
            monitor.info(f"resumed from {cfg.resume} at epoch {self.state.epoch} step {self.state.step}")
            if self.resume_note:
                monitor.info(self.resume_note)
        elif self.loggers.wants_images and self.mixer.active(0) and method_of(cfg.augment).previewable:
            self.loggers.image("mixing/batch", mixed_batch_grid(data.train, data.classes, cfg.augment, cfg.dataset,
                                                                cfg.trainer.epochs, cfg.seed))

    def warn_stacked_smoothing(self) -> None:
        """Mixing and label smoothing together soften the targets twice; with alpha above 0.5 this
        tends to underfit. Say so, with the mean entropy of the targets of a mixed batch."""
        augment, data = self.cfg.augment, self.data
        if not (isinstance(augment, MixConfig) and augment.label_smoothing > 0 and self.mixer.active(0)):
            return
        data.train.set_epoch(0)
        images, labels = next(iter(data.train))
        mixer = create_mixer(augment, data.num_classes, self.cfg.trainer.epochs, seed=self.cfg.seed + 2_000_000)
        _, targets = mixer(images.clone(), labels, 0)
        smoothed = mixer.targets(labels)
        self.monitor.warn_once("smoothing", f"augment.label_smoothing={augment.label_smoothing:g} on top of "
                                            f"augment={augment.name}: mean target entropy of a mixed batch "
                                            f"{target_entropy(targets):.3f} nats (one-hot: 0, smoothed alone: "
                                            f"{target_entropy(smoothed):.3f}); with alpha above 0.5 the two together "
                                            "tend to underfit")

    # ---- training

    def make_parts(self) -> list:
        """The parts, in the order they are called: each event sees the earlier ones' work."""
        cfg, trainer = self.cfg, self.cfg.trainer
        self.nan_policy = NanPolicy(trainer, self.precision, self.run_dir / layout.LAST, self.monitor)
        self.checkpoints = Checkpoints(self.save, self.run_dir, cfg.objective,
                                       trainer.ema.select_best and self.ema is not None, trainer.keep_best,
                                       trainer.checkpoint_every_steps)
        # The loggers before a stop: a sync point's numbers reach them before a signal stops the run there.
        parts = [self.nan_policy, self.loggers, StopOnSignal(self.stop, self.save, self.run_dir, trainer.checkpoint)]
        if self.ema is not None:
            parts.append(Ema(self.ema, self.model, trainer.ema.every))
        evaluation = Evaluation(self.model, self.ema.module if self.ema is not None else None, self.data.val,
                                self.precision, self.run_dir, self.loggers, trainer.epochs, trainer.eval_every)
        return [*parts, evaluation, self.checkpoints, Records(self.monitor, trainer.batch_size, self.report)]

    def report(self) -> None:
        """At each epoch's end: unreadable files (once), and summary.json saying running."""
        self.warn_unreadable()
        self.write_status(layout.RUNNING)

    def trainer(self) -> Trainer:
        cfg = self.cfg.trainer
        return Trainer(self.train_model, self.data.train, self.step, self.scheduler, self.state, cfg.epochs,
                       self.device, self.cfg.sched.step_on, cfg.log_every, cfg.checkpoint_every_steps,
                       self.ctx.world_size, self.history, self.parts, self.stop)

    def run_info(self) -> RunInfo:
        """What the loggers are told of this run when they start."""
        return RunInfo(self.run_dir, self.config, saved_overrides(self.run_dir), sweep_of(self.run_dir),
                       list(self.history), self.state.global_step, self.resumed)

    def end(self, status: str, tracker_status: str, **fields: Any) -> None:
        """A run that did not complete: summary.json says how, the loggers hear it, the monitor closes."""
        self.write_status(status, **fields)
        self.loggers.finish(tracker_status, {"status": status, **self.summary(), **fields}, self.run_dir)
        self.monitor.close()

    def train(self) -> Dict[str, Any]:
        monitor = self.monitor
        self.loggers.start(self.run_info())
        self.introduce()
        self.loggers.announce()
        self.write_status(layout.RUNNING)
        try:
            with self.stop:
                self.trainer().fit()
        except RunStopped as ex:
            signalled = ex.exit_code > 128
            self.end(layout.INTERRUPTED if signalled else layout.FAILED, KILLED if signalled else FAILED,
                     error=str(ex))
            raise
        except OSError as ex:  # the disk under the run: full, gone read-only, unmounted
            stopped = RunStopped(f"I/O error on {ex.filename or self.run_dir} ({ex.strerror or ex}): free space or "
                                 f"fix the dir, then continue with {resume_command(self.run_dir)}")
            self.end(layout.FAILED, FAILED, error=str(stopped))
            raise stopped from None
        except BaseException as ex:
            self.end(layout.FAILED, KILLED if isinstance(ex, KeyboardInterrupt) else FAILED,
                     error=f"{type(ex).__name__}: {ex}"[:500])
            raise
        digests = distributed.gather_objects(distributed.weights_digest(self.model))
        summary = {"status": layout.COMPLETED, **self.summary(), "world_size": self.ctx.world_size,
                   "ranks_in_sync": len(set(digests)) == 1, "weights_sha256": digests[0],
                   "loggers": self.loggers.where(), "config": self.config}
        if self.ctx.is_main:
            write_summary(self.run_dir / layout.SUMMARY, summary)
        if not summary["ranks_in_sync"]:
            monitor.warn_once("sync", f"the ranks' final weights differ: {digests}")
        ema = f", EMA {summary['final_ema_val_acc1']:.2f}" if self.ema is not None else ""
        monitor.info(
            f"done: best val acc {summary['best_val_acc1']:.2f} (epoch {summary['best_epoch']}), final val acc "
            f"{summary['final_val_acc1']:.2f}{ema}, ECE {summary['final_val_ece']:.4f}, NLL "
            f"{summary['final_val_nll']:.4f} in {summary['wall_time_s']:.0f}s | {self.run_dir / layout.SUMMARY}"
        )
        self.loggers.finish(FINISHED, summary, self.run_dir)
        monitor.close()
        distributed.barrier()  # no rank leaves before rank 0 has written the run's files
        return summary


def write_summary(path: Path, summary: Dict[str, Any]) -> None:
    """``summary.json``, atomically; where the dir no longer takes a new file (made read-only under
    the run), in place, so that it still tells how the run ended; else nothing more to do."""
    try:
        write_json_atomic(path, summary)
    except OSError:
        try:
            path.write_text(json.dumps(summary, indent=2))
        except OSError:
            pass


def summarize(history: List[dict], best_epoch: int, nan_skips: int, wall_time: float, data: Data,
              label_noise: float = 0.0) -> Dict[str, Any]:
    evaluated = [r for r in history if "val_acc1" in r]
    final = evaluated[-1] if evaluated else {}
    rates = [r["img_per_s"] for r in history if not math.isnan(r.get("img_per_s", float("nan")))]
    nan = float("nan")
    summary = {
        "epochs": len(history),
        "best_val_acc1": max((r["val_acc1"] for r in evaluated), default=nan),
        "best_epoch": best_epoch,
        "final_val_acc1": final.get("val_acc1", nan),
        "final_val_acc5": final.get("val_acc5", nan),
        "final_val_ece": final.get("val_ece", nan),
        "final_val_nll": final.get("val_nll", nan),
        "final_val_ece_ts": final.get("val_ece_ts", nan),  # after temperature scaling (T on the other half)
        "final_val_nll_ts": final.get("val_nll_ts", nan),
        "final_val_temperature": final.get("val_temperature", nan),
        "final_val_ci": final.get("val_ci"),  # 95% bootstrap intervals of top-1, NLL, Brier, ECE
        "final_train_loss": history[-1]["train_loss"] if history else nan,
        "wall_time_s": wall_time,
        "img_per_s": sum(rates) / len(rates) if rates else nan,
        "num_classes": data.num_classes,
        "nan_skips": nan_skips,
        "unreadable_images": len(data.unreadable()),
        "label_noise": label_noise,
        "labels_changed": data.labels_changed,
    }
    # The EMA weights' numbers (NaN without trainer.ema): every objective is always a key.
    summary.update({"best_ema_val_acc1": max((r["ema_val_acc1"] for r in evaluated if "ema_val_acc1" in r), default=nan),
                    **{f"final_ema_val_{k}": final.get(f"ema_val_{k}", nan) for k in ("acc1", "ece", "nll")}})
    return summary


def fit(cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None) -> Dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; return the summary (also written to ``summary.json``).

    Raises :class:`~mixtrain.errors.RunStopped` after a clean stop (signal, non-finite
    loss) and :class:`~mixtrain.errors.MixtrainError` for bad input; ``summary.json`` says
    which, in any case. Under torchrun every rank calls it; only rank 0 writes anything.
    """
    return Training(cfg, Path(run_dir), monitor).train()
