"""A training run assembled from its config: data, model, optimizer, schedule, mixing, parts.

:class:`Training` builds everything ``fit`` needs in a few steps, in the order a reader expects (the
run dir, data, model, optimizer and schedule, mixing, restore, wrap, parts), saves and reports the
run, and hands the loop to the :class:`~mixtrain.train.engine.Trainer` with its parts. What it says
before training: :mod:`mixtrain.train.introduction`; its figures: :mod:`mixtrain.train.summary`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from mixtrain import layout
from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.checkpoint import TrainState
from mixtrain.artifacts.init_from import init_weights
from mixtrain.config import TrainConfig, asdict
from mixtrain.config.overrides import saved_overrides
from mixtrain.data import Data, build_data
from mixtrain.errors import MixtrainError, RunStopped, resume_command
from mixtrain.layout import holds_run
from mixtrain.loggers import FAILED, FINISHED, KILLED, RunInfo, create_loggers, sweep_of
from mixtrain.mixing import create_mixer
from mixtrain.mixing.losses import create_loss
from mixtrain.models import create_model
from mixtrain.runtime import clock, distributed
from mixtrain.runtime.precision import resolve_device, resolve_precision
from mixtrain.runtime.seeds import seed_everything
from mixtrain.train.debug import debug_mode
from mixtrain.train.endings import disk_fix, ending
from mixtrain.train.engine import Part, Step, Trainer
from mixtrain.train.freeze import Freeze
from mixtrain.train.introduction import introduce, warn_unreadable
from mixtrain.train.monitor import RunMonitor, reconcile_metrics
from mixtrain.train.optim import Schedule, create_optimizer, scaled_lr, schedule_metric
from mixtrain.train.parts import Checkpoints, Ema, Evaluation, NanPolicy, Records, StopOnSignal, StopRequest
from mixtrain.train.summary import done_line, option_names, summarize, write_summary
from mixtrain.train.tracking import Loggers


@dataclass
class RunParts:
    """The run's parts in the order they are called (``all``), and those it asks about by name."""

    nan_policy: NanPolicy
    checkpoints: Checkpoints
    all: List[Part]


class Training:
    """One training run: its parts, where it is, and how it saves and reports itself."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None,
                 options: Optional[Dict[str, str]] = None) -> None:
        clock.start_job()  # this run's start-up is its own, whatever ran in this process before it
        self.cfg, self.run_dir, self.t_start = cfg, run_dir, time.perf_counter()
        self.options = option_names(cfg, options)
        self.debug = debug_mode(cfg.debug)  # debug=...: what it changes, asked for at each step below
        self.ctx = distributed.init(cfg.trainer.device)
        saved, loggers = self._setup_run_dir()
        self._setup_data()
        self._setup_model(saved)
        self._setup_optimizer()
        self._setup_mixing()
        saved_parts = self._restore(saved)
        self._wrap()
        self.monitor = monitor or RunMonitor(run_dir, enabled=self.ctx.is_main)
        self.loggers = Loggers(loggers, self.monitor)
        if self.ema is not None:
            self.monitor.optional_columns.add("ema_val_acc1")
        self.stop = StopRequest()
        self.parts = self.make_parts()
        for part in self.parts.all:
            part.load_state_dict(saved_parts.get(part.name, {}))

    # ---- setup, in order

    def _setup_run_dir(self) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
        """The checkpoint a resume continues (None for a new run) and this run's loggers (rank 0's); every
        rank stops with the same line when the batch does not divide, the dir is taken or a logger refuses."""
        cfg, ctx, trainer = self.cfg, self.ctx, self.cfg.trainer
        if trainer.batch_size % ctx.world_size or trainer.eval_batch_size % ctx.world_size:
            raise MixtrainError(f"trainer.batch_size ({trainer.batch_size}) and trainer.eval_batch_size "
                                f"({trainer.eval_batch_size}) are global batches and must divide evenly over "
                                f"{ctx.world_size} processes")
        saved = checkpoint.load(checkpoint.resume_checkpoint(cfg.resume)) if cfg.resume else None
        self.config = asdict(cfg)
        # A resume that would change what the run means is refused before any data is read.
        self.resume_note = checkpoint.check_resumable(saved, self.config, Path(cfg.resume)) if saved else None
        problem, loggers = None, {}
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if saved is None and holds_run(self.run_dir):
                problem = (f"{self.run_dir} already holds a run: pick another hydra.run.dir, or continue it with "
                           f"{resume_command(self.run_dir)}")
            try:
                loggers = create_loggers(cfg.logger)  # only rank 0 logs
            except MixtrainError as ex:
                problem = problem or str(ex)
        problem = distributed.broadcast_object(problem)  # every rank stops with the same line
        if problem:
            raise MixtrainError(problem)
        self.resumed = saved is not None
        return saved, loggers

    def _setup_data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.device = distributed.device_for(ctx, resolve_device(cfg.trainer.device))
        self.precision = resolve_precision(cfg.trainer, self.device)
        seed_everything(cfg.seed, ctx.rank)
        self.data: Data = (self.debug.data(cfg, self.device, ctx.rank, ctx.world_size)
                           or build_data(cfg.dataset, cfg.trainer, self.device, cfg.seed, ctx.rank, ctx.world_size))

    def _setup_model(self, saved: Optional[Dict[str, Any]]) -> None:
        """The model and its first weights: a resumed run's come from its checkpoint (no file or hub is
        read again), a new run's from ``model.pretrained*`` or ``init_from``."""
        cfg = self.cfg
        self.weights_notes: List[str] = []
        model = create_model(cfg.model, self.data.num_classes, load_weights=saved is None and not cfg.init_from,
                             notes=self.weights_notes)
        self.init_source: Optional[Dict[str, Any]] = None
        if saved is None and cfg.init_from:
            self.init_source, line = init_weights(model, cfg.model.name, cfg.init_from, cfg.init_from_ema)
            self.weights_notes.append(line)
        if cfg.model.freeze and self.ctx.world_size > 1:
            raise MixtrainError("model.freeze under torchrun is not supported (DDP needs the same parameters to "
                                "train throughout): train frozen on one process, or drop model.freeze")
        self.model = model.to(self.device)  # the unwrapped model
        if cfg.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = None
        if cfg.trainer.ema.enabled:
            from timm.utils import ModelEmaV3  # timm's model registry (0.6 s): only with EMA on

            ema = cfg.trainer.ema
            self.ema = ModelEmaV3(self.model, decay=ema.decay, use_warmup=ema.warmup, exclude_buffers=True)

    def _setup_optimizer(self) -> None:
        cfg, trainer = self.cfg, self.cfg.trainer
        self.lr = scaled_lr(cfg.optim, trainer.batch_size)
        self.optimizer = create_optimizer(cfg.optim, self.model, self.lr)
        self.schedule_metric = schedule_metric(cfg)
        self.scheduler = Schedule(cfg.sched, self.optimizer, self.debug.schedule_epochs(trainer.epochs),
                                  len(self.data.train), cfg.seed, self.schedule_metric[1] if self.schedule_metric else "max")

    def _setup_mixing(self) -> None:
        cfg, trainer = self.cfg, self.cfg.trainer
        augment = self.debug.augment(cfg.augment)
        self.mixer = create_mixer(augment, self.data.num_classes, trainer.epochs, cfg.seed, self.ctx.rank)
        self.step = Step(self.optimizer, self.precision, self.mixer, create_loss(augment), trainer.accum_steps,
                         trainer.clip_grad, trainer.clip_value)

    def _restore(self, saved: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
        """Where the run is: a new run at its start, a resumed one from its checkpoint (every object's state,
        its history, the note of what a longer run does to the schedule). Returns the parts' saved states."""
        self.state, self.history, self.wall_before = TrainState(), [], 0.0
        self.metrics_note: Optional[str] = None  # what resuming did to metrics.jsonl
        if saved is None:
            return {}
        ctx = self.ctx
        checkpoint.check_resumable_data(saved, self.data.classes, Path(self.cfg.resume), self.data.train.num_samples,
                                        self.loader_order())
        self.state, self.history = checkpoint.restore(saved, self.stateful(), self.mixer, ctx.rank, ctx.world_size)
        self.wall_before = self.state.wall_time
        if ctx.is_main:
            self.metrics_note = reconcile_metrics(self.run_dir / layout.METRICS, self.history)
        if self.resume_note:
            lr_next = self.scheduler.lr_at(self.state.epoch, self.state.global_step)
            self.resume_note += f"; here: lr {self.scheduler.lr():.4g} -> {lr_next:.4g}"
        return checkpoint.part_states(saved)

    def _wrap(self) -> None:
        """DDP after restoring, so that every rank starts from the same weights; then torch.compile."""
        self.train_model = distributed.wrap_model(self.model, self.device, self.cfg.trainer.sync_bn)
        if self.cfg.trainer.compile:
            self.train_model = torch.compile(self.train_model)

    def make_parts(self) -> RunParts:
        """The parts, in the order they are called: each event sees the earlier ones' work."""
        cfg, trainer = self.cfg, self.cfg.trainer
        nan_policy = NanPolicy(trainer, self.precision, self.run_dir / layout.LAST, self.monitor)
        checkpoints = Checkpoints(self.save, self.run_dir, cfg.objective, trainer.ema.select_best and self.ema is not None,
                                  trainer.keep_best, trainer.checkpoint_every_steps)
        # The loggers before a stop: a sync point's numbers reach them before a signal stops the run there.
        parts = [nan_policy, self.loggers, StopOnSignal(self.stop, self.save, self.run_dir, trainer.checkpoint)]
        if cfg.model.freeze:
            parts.append(Freeze(self.model, cfg.model.freeze_epochs))
        if self.ema is not None:
            parts.append(Ema(self.ema, self.model, trainer.ema.every))
        parts += self.debug.parts(self)
        evaluation = Evaluation(self.model, self.ema.module if self.ema is not None else None, self.data.val,
                                self.precision, self.run_dir, self.loggers, self.debug.epochs(trainer.epochs),
                                trainer.eval_every)
        records = Records(self.monitor, trainer.batch_size, self.report)
        return RunParts(nan_policy, checkpoints, [*parts, evaluation, checkpoints, records])

    # ---- what the run is and where it is

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

    def option(self, group: str) -> str:
        """How the run names a group's option: the option's own name (a user's ``dataset=photos``),
        with its kind's name when that differs (``photos (imagefolder)``)."""
        name, kind = self.options[group], getattr(self.cfg, group).name
        return name if name == kind else f"{name} ({kind})"

    # ---- records

    def summary(self) -> Dict[str, Any]:
        checkpoints = self.parts.checkpoints
        summary = {**summarize(self.history, checkpoints.best_epoch, self.parts.nan_policy.skips, self.wall_time(),
                               self.data, self.cfg.dataset.label_noise, checkpoints.key),
                   "debug": self.debug.result()}  # what debug=... found (None without it)
        if self.init_source is not None:
            summary["init_from"] = self.init_source  # where the weights came from: path, sha256, raw or EMA
        return summary

    def record(self, status: str, **fields: Any) -> Dict[str, Any]:
        """``summary.json``'s content: the status, the figures, who runs it, the config."""
        return {"status": status, **self.summary(), **fields, "pid": os.getpid(), "host": socket.gethostname(),
                "world_size": self.ctx.world_size, "options": self.options, "loggers": self.loggers.where(),
                "config": self.config}

    def write_status(self, status: str, **fields: Any) -> None:
        """``summary.json``: ``running`` (with pid and host, so a dead run can be told apart),
        then ``completed``, ``failed`` or ``interrupted``."""
        if self.ctx.is_main:
            write_summary(self.run_dir / layout.SUMMARY, self.record(status, **fields))

    def save(self, name: str) -> None:
        """A checkpoint (every rank takes part: each one's RNG state goes in it; rank 0 writes)."""
        if not self.cfg.trainer.checkpoint:
            return
        self.state.wall_time = self.wall_time()
        ranks = distributed.gather_objects(checkpoint.rank_state(self.mixer, self.state))
        if self.ctx.is_main:
            path = self.run_dir / name
            try:
                parts = {part.name: part.state_dict() for part in self.parts.all}
                checkpoint.save_atomic(checkpoint.snapshot(self.stateful(), self.config, self.data.classes,
                                                           self.state, self.history, ranks, parts,
                                                           self.data.train.num_samples, self.loader_order()), path)
            except OSError as ex:  # a full disk, a file size limit, a dir made read-only or removed under the run
                raise RunStopped(f"cannot write the checkpoint {path} ({ex.strerror or ex}): "
                                 f"{disk_fix(ex, self.run_dir)}") from None

    def report(self) -> None:
        """At each epoch's end: unreadable files (once), and summary.json saying running."""
        warn_unreadable(self)
        self.write_status(layout.RUNNING)

    # ---- training

    def trainer(self, parts: Optional[List[Part]] = None) -> Trainer:
        """The loop over this run's state, with its parts (or ``parts``: a benchmark's timer)."""
        cfg = self.cfg.trainer
        return Trainer(model=self.train_model, loader=self.data.train, step=self.step, schedule=self.scheduler,
                       state=self.state, epochs=self.debug.epochs(cfg.epochs), device=self.device,
                       schedule_metric=self.schedule_metric[0] if self.schedule_metric else None,
                       log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every_steps,
                       world_size=self.ctx.world_size, history=self.history,
                       parts=self.parts.all if parts is None else parts, stop_requested=self.stop,
                       stop_vote=distributed.StopVote())

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
        introduce(self)
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
        summary = self.record(layout.COMPLETED, ranks_in_sync=len(set(digests)) == 1, weights_sha256=digests[0])
        if self.ctx.is_main:
            write_summary(self.run_dir / layout.SUMMARY, summary)
        if not summary["ranks_in_sync"]:
            monitor.warn_once("sync", f"the ranks' final weights differ: {digests}")
        monitor.info(done_line(summary, self.ema is not None, self.cfg.trainer.checkpoint, self.run_dir))
        self.loggers.finish(FINISHED, summary, self.run_dir)
        monitor.close()
        distributed.barrier()  # no rank leaves before rank 0 has written the run's files
        return summary


def fit(cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None,
        options: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; return the summary (also written to ``summary.json``).

    Raises :class:`~mixtrain.errors.RunStopped` after a clean stop (signal, non-finite
    loss) and :class:`~mixtrain.errors.MixtrainError` for bad input; ``summary.json`` says
    which, in any case. Under torchrun every rank calls it; only rank 0 writes anything. ``options``:
    the option chosen for each group, as Hydra's ``runtime.choices`` (else the configs' names).
    """
    return Training(cfg, Path(run_dir), monitor, options).train()
