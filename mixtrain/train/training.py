"""A training run assembled from its config: data, model, optimizer, schedule, mixing, parts.

:class:`Training` builds everything ``fit`` needs (restoring it from a checkpoint when
resuming), saves and reports the run, and hands the loop to the
:class:`~mixtrain.train.engine.Trainer` with its parts.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from mixtrain import layout
from mixtrain.layout import objective_metric
from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.checkpoint import TrainState
from mixtrain.artifacts.init_from import init_weights
from mixtrain.config import MixConfig, TrainConfig, asdict
from mixtrain.config.overrides import saved_overrides
from mixtrain.config.registry import advice
from mixtrain.data import Data, build_data
from mixtrain.errors import MixtrainError, RunStopped, resume_command
from mixtrain.files import write_json_atomic
from mixtrain.loggers import FAILED, FINISHED, KILLED, RunInfo, create_loggers, sweep_of
from mixtrain.mixing import create_mixer, method_of
from mixtrain.mixing.losses import create_loss
from mixtrain.mixing.preview import mixed_batch_grid
from mixtrain.mixing.softness import stacked_smoothing_warning
from mixtrain.models import create_model
from mixtrain.runtime import clock, distributed
from mixtrain.runtime.precision import resolve_device, resolve_precision
from mixtrain.train.debug import debug_mode
from mixtrain.train.endings import disk_fix, ending
from mixtrain.train.engine import Step, Trainer
from mixtrain.train.freeze import Freeze
from mixtrain.train.monitor import RunMonitor, reconcile_metrics
from mixtrain.train.optim import Schedule, create_optimizer, scaled_lr
from mixtrain.train.parts import Checkpoints, Ema, Evaluation, NanPolicy, Records, StopOnSignal, StopRequest
from mixtrain.train.summary import done_line, option_names, summarize
from mixtrain.train.tracking import Loggers


def seed_everything(seed: int, rank: int = 0) -> None:
    """The process's global streams (model init, dropout, drop-path) from seed and rank, as timm does.

    Every rank draws its own masks; the initial weights still agree, since DDP broadcasts
    rank 0's. Data order, augmentation and mixing have generators of their own.
    """
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


def schedule_metric(cfg: TrainConfig) -> Optional[Tuple[str, str]]:
    """What a plateau schedule steps on: the record key of the run's objective (the EMA weights' with
    ``trainer.ema.select_best``) and its direction; None for the other schedules."""
    if cfg.sched.name != "plateau":
        return None
    key, mode = objective_metric(cfg.objective)
    if cfg.trainer.ema.enabled and cfg.trainer.ema.select_best and key.startswith("val_"):
        key = f"ema_{key}"
    return key, mode


def describe_preprocessing(dataset: Any, model_name: str) -> str:
    """``preprocessing: 224 px, mean ..., bicubic, crop 0.9 center (from the model ...)``: the values a
    streamed dataset reads its images with, and where each came from; empty for data held on the device."""
    sources = getattr(dataset, "preprocessing_from", None)
    if not sources:
        return ""
    origin = {"model": f"model {model_name}", "default": "dataset default", "set": "set"}
    parts = {"image_size": f"{dataset.image_size} px", "mean": f"mean {fmt_floats(dataset.mean)}",
             "std": f"std {fmt_floats(dataset.std)}", "interpolation": dataset.interpolation,
             "crop_pct": f"crop {dataset.crop_pct:g}", "crop_mode": dataset.crop_mode}
    groups: Dict[str, List[str]] = {}
    for key, text in parts.items():
        groups.setdefault(sources[key], []).append(text)
    return "preprocessing: " + "; ".join(f"{', '.join(texts)} ({origin[source]})" for source, texts in groups.items())


def fmt_floats(values: List[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def holds_run(run_dir: Path) -> bool:
    """Whether a run has written into ``run_dir`` (even one whose first epoch crashed)."""
    return any((run_dir / name).exists() for name in layout.RUN_FILES)


class Training:
    """One training run: its parts, where it is, and how it saves and reports itself."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None,
                 options: Optional[Dict[str, str]] = None) -> None:
        clock.start_job()  # this run's start-up is its own, whatever ran in this process before it
        self.cfg, self.run_dir, self.t_start = cfg, run_dir, time.perf_counter()
        self.options = option_names(cfg, options)
        self.debug = debug_mode(cfg.debug)  # debug=...: what it changes, asked for at each step below
        ctx = self.ctx = distributed.init(cfg.trainer.device)
        trainer = cfg.trainer
        if trainer.batch_size % ctx.world_size or trainer.eval_batch_size % ctx.world_size:
            raise MixtrainError(f"trainer.batch_size ({trainer.batch_size}) and trainer.eval_batch_size "
                                f"({trainer.eval_batch_size}) are global batches and must divide evenly over "
                                f"{ctx.world_size} processes")
        saved = checkpoint.load(checkpoint.resume_checkpoint(cfg.resume)) if cfg.resume else None
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
        self.data: Data = (self.debug.data(cfg, self.device, ctx.rank, ctx.world_size)
                           or build_data(cfg.dataset, trainer, self.device, cfg.seed, ctx.rank, ctx.world_size))
        # The first weights: a resumed run's come from its checkpoint (no file or hub is read again).
        self.weights_notes: List[str] = []
        self.model = create_model(cfg.model, self.data.num_classes, load_weights=saved is None and not cfg.init_from,
                                  notes=self.weights_notes)
        self.init_source: Optional[Dict[str, Any]] = None
        if saved is None and cfg.init_from:
            self.init_source, line = init_weights(self.model, cfg.model.name, cfg.init_from, cfg.init_from_ema)
            self.weights_notes.append(line)
        if cfg.model.freeze and ctx.world_size > 1:
            raise MixtrainError("model.freeze under torchrun is not supported (DDP needs the same parameters to "
                                "train throughout): train frozen on one process, or drop model.freeze")
        self.model = self.model.to(self.device)  # the unwrapped model
        if trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.lr = scaled_lr(cfg.optim, trainer.batch_size)
        self.optimizer = create_optimizer(cfg.optim, self.model, self.lr)
        self.schedule_metric = schedule_metric(cfg)
        self.scheduler = Schedule(cfg.sched, self.optimizer, self.debug.schedule_epochs(trainer.epochs),
                                  len(self.data.train), cfg.seed, self.schedule_metric[1] if self.schedule_metric else "max")
        augment = self.debug.augment(cfg.augment)
        self.mixer = create_mixer(augment, self.data.num_classes, trainer.epochs, cfg.seed, ctx.rank)
        self.step = Step(self.optimizer, self.precision, self.mixer, create_loss(augment), trainer.accum_steps,
                         trainer.clip_grad, trainer.clip_value)
        self.ema = None
        if trainer.ema.enabled:
            from timm.utils import ModelEmaV3  # timm's model registry (0.6 s): only with EMA on

            self.ema = ModelEmaV3(self.model, decay=trainer.ema.decay, use_warmup=trainer.ema.warmup,
                                  exclude_buffers=True)
        self.config = asdict(cfg)
        self.state, self.history, self.resume_note, self.wall_before = TrainState(), [], None, 0.0
        self.metrics_note: Optional[str] = None  # what resuming did to metrics.jsonl
        saved_parts: Dict[str, Dict[str, Any]] = {}
        if saved is not None:
            self.resume_note = checkpoint.check_resumable(saved, self.config, self.data.classes, Path(cfg.resume),
                                                          self.data.train.num_samples, self.loader_order())
            self.state, self.history = checkpoint.restore(saved, self.stateful(), self.mixer, ctx.rank,
                                                          ctx.world_size)
            saved_parts = checkpoint.part_states(saved)
            self.wall_before = self.state.wall_time
            if ctx.is_main:
                self.metrics_note = reconcile_metrics(run_dir / layout.METRICS, self.history)
            if self.resume_note:
                lr_next = self.scheduler.lr_at(self.state.epoch, self.state.global_step)
                self.resume_note += f"; here: lr {self.scheduler.lr():.4g} -> {lr_next:.4g}"
        # DDP after restoring, so that every rank starts from the same weights.
        self.train_model = distributed.wrap_model(self.model, self.device, trainer.sync_bn)
        if trainer.compile:
            self.train_model = torch.compile(self.train_model)
        # On resume, TensorBoard hides what a crashed attempt logged after the checkpoint.
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
        summary = {**summarize(self.history, self.checkpoints.best_epoch, self.nan_policy.skips, self.wall_time(),
                               self.data, self.cfg.dataset.label_noise, self.checkpoints.key),
                   "debug": self.debug.result()}  # what debug=... found (None without it)
        if self.init_source is not None:
            summary["init_from"] = self.init_source  # where the weights came from: path, sha256, raw or EMA
        return summary

    def write_status(self, status: str, **fields: Any) -> None:
        """``summary.json``: ``running`` (with pid and host, so a dead run can be told apart),
        then ``completed``, ``failed`` or ``interrupted``."""
        if self.ctx.is_main:
            write_summary(self.run_dir / layout.SUMMARY, {
                "status": status, **self.summary(), **fields, "pid": os.getpid(), "host": socket.gethostname(),
                "world_size": self.ctx.world_size, "options": self.options, "loggers": self.loggers.where(),
                "config": self.config})

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
            except OSError as ex:  # a full disk, a file size limit, a dir made read-only or removed under the run
                raise RunStopped(f"cannot write the checkpoint {path} ({ex.strerror or ex}): "
                                 f"{disk_fix(ex, self.run_dir)}") from None

    def option(self, group: str) -> str:
        """How the run names a group's option: the option's own name (a user's ``dataset=photos``),
        with its kind's name when that differs (``photos (imagefolder)``)."""
        name, kind = self.options[group], getattr(self.cfg, group).name
        return name if name == kind else f"{name} ({kind})"

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
            f"[bold]mixtrain[/] {cfg.model.name} on {self.option('dataset')} ({data.train.num_samples} train / "
            f"{data.val.num_samples} val, {data.num_classes} classes, {sizes}) | {self.device} {self.precision.name}"
            f"{f' x {self.ctx.world_size} processes' if self.ctx.enabled else ''} | augment={self.option('augment')} | "
            f"{lr} | run dir {self.run_dir}"
        )
        chosen = getattr(cfg.model, "chosen_by", None)
        if chosen:
            monitor.info(chosen)
        for line in self.weights_notes:
            monitor.info(line)
        preprocessing = describe_preprocessing(cfg.dataset, cfg.model.name)
        if preprocessing:
            monitor.info(preprocessing)
        for key, line in enumerate(advice(cfg)):
            monitor.warn_once(f"advice{key}", line)
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
            if self.metrics_note:
                monitor.info(self.metrics_note)
        elif self.loggers.wants_images and self.mixer.active(0) and method_of(cfg.augment).previewable:
            self.loggers.image("mixing/batch", mixed_batch_grid(data.train, data.classes, cfg.augment, cfg.dataset,
                                                                cfg.trainer.epochs, cfg.seed))

    def warn_stacked_smoothing(self) -> None:
        """Mixing and label smoothing together soften the targets twice: say so when, measured over
        many draws on the first batch, they are softer than DeiT's setting (mixing/softness.py)."""
        augment, data = self.cfg.augment, self.data
        if not (isinstance(augment, MixConfig) and augment.label_smoothing > 0 and self.mixer.active(0)):
            return
        data.train.set_epoch(0)
        images, labels = next(iter(data.train))
        warning = stacked_smoothing_warning(augment, data.num_classes, images, labels, self.cfg.seed + 2_000_000)
        if warning:
            self.monitor.warn_once("smoothing", warning)

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
        if cfg.model.freeze:
            parts.append(Freeze(self.model, cfg.model.freeze_epochs))
        if self.ema is not None:
            parts.append(Ema(self.ema, self.model, trainer.ema.every))
        parts += self.debug.parts(self)
        evaluation = Evaluation(self.model, self.ema.module if self.ema is not None else None, self.data.val,
                                self.precision, self.run_dir, self.loggers, self.debug.epochs(trainer.epochs),
                                trainer.eval_every)
        return [*parts, evaluation, self.checkpoints, Records(self.monitor, trainer.batch_size, self.report)]

    def report(self) -> None:
        """At each epoch's end: unreadable files (once), and summary.json saying running."""
        self.warn_unreadable()
        self.write_status(layout.RUNNING)

    def trainer(self) -> Trainer:
        cfg = self.cfg.trainer
        return Trainer(self.train_model, self.data.train, self.step, self.scheduler, self.state,
                       self.debug.epochs(cfg.epochs), self.device,
                       self.schedule_metric[0] if self.schedule_metric else None, cfg.log_every,
                       cfg.checkpoint_every_steps, self.ctx.world_size, self.history, self.parts, self.stop,
                       distributed.StopVote())

    def run_info(self) -> RunInfo:
        """What the loggers are told of this run when they start."""
        return RunInfo(self.run_dir, self.config, saved_overrides(self.run_dir), sweep_of(self.run_dir),
                       list(self.history), self.state.global_step, self.resumed, self.options)

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
        except BaseException as ex:
            said = ending(ex, self.run_dir)  # a full disk, a worker killed, ...: one line that says so
            stopped = isinstance(said, RunStopped) and said.exit_code > 128
            known = isinstance(said, (RunStopped, MixtrainError))
            killed = stopped or isinstance(ex, KeyboardInterrupt)
            self.end(layout.INTERRUPTED if stopped else layout.FAILED, KILLED if killed else FAILED,
                     error=str(said) if known else f"{type(ex).__name__}: {ex}"[:500])
            if said is ex:
                raise
            raise said from None
        digests = distributed.gather_objects(distributed.weights_digest(self.model))
        summary = {"status": layout.COMPLETED, **self.summary(), "world_size": self.ctx.world_size,
                   "ranks_in_sync": len(set(digests)) == 1, "weights_sha256": digests[0], "pid": os.getpid(),
                   "host": socket.gethostname(), "options": self.options, "loggers": self.loggers.where(),
                   "config": self.config}
        if self.ctx.is_main:
            write_summary(self.run_dir / layout.SUMMARY, summary)
        if not summary["ranks_in_sync"]:
            monitor.warn_once("sync", f"the ranks' final weights differ: {digests}")
        monitor.info(done_line(summary, self.ema is not None, self.cfg.trainer.checkpoint, self.run_dir))
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


def fit(cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None,
        options: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; return the summary (also written to ``summary.json``).

    Raises :class:`~mixtrain.errors.RunStopped` after a clean stop (signal, non-finite
    loss) and :class:`~mixtrain.errors.MixtrainError` for bad input; ``summary.json`` says
    which, in any case. Under torchrun every rank calls it; only rank 0 writes anything. ``options``:
    the option chosen for each group, as Hydra's ``runtime.choices`` (else the configs' names).
    """
    return Training(cfg, Path(run_dir), monitor, options).train()
