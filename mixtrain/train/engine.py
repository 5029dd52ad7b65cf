"""The training engine: a pure step, and a short loop that hands events to parts.

- :func:`train_step` is one optimizer step: batch in, :class:`StepOutput` out, every value a
  tensor on the device. It reads nothing back to the host (the fp16 GradScaler aside,
  which checks its gradients itself), so the host can queue steps ahead of a GPU.
- :class:`Trainer` runs steps and calls its parts (:mod:`mixtrain.train.parts`) at named moments:
  ``epoch_start``, ``step_end`` after every step (device work only: EMA), ``sync`` at each sync point (every
  ``trainer.log_every`` and ``checkpoint_every_steps`` steps, at the epoch's end, and after the step
  in progress when a stop is asked: the only place the host reads device values: NaN policy, stop
  signals, progress, step checkpoints), ``epoch_end`` (evaluation fills the epoch's record),
  ``eval_end`` (the record is final: checkpoints, logging) and ``stop`` (the run ends, however it ends).

A stop request (a signal) is a host flag, looked at after every step without reading the device:
a stop is honoured within one step (two under torchrun, whose ranks agree on the step by a CPU
vote), plus the checkpoint it writes, however long a step takes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from mixtrain.artifacts.checkpoint import EpochProgress, TrainState
from mixtrain.evaluate.metrics import ClassificationMeter
from mixtrain.mixing import Mixer
from mixtrain.mixing.losses import Loss
from mixtrain.runtime import clock, distributed
from mixtrain.runtime.precision import Precision

# --------------------------------------------------------------------------- one step


@dataclass
class StepOutput:
    loss: torch.Tensor  # the batch's mean loss, 0-d float32
    correct: torch.Tensor  # predictions equal to each target's dominant label, 0-d
    applied: torch.Tensor  # 0-d bool: the update went in (finite loss and gradients)
    grad_norm: Optional[torch.Tensor] = None  # total gradient norm before clipping (with clipping on)


@dataclass
class Step:
    """What a training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    precision: Precision
    mixer: Mixer
    loss_fn: Loss
    accum_steps: int = 1
    clip_grad: Optional[str] = None  # norm | value | agc
    clip_value: float = 1.0


def hits(logits: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
    """Predictions equal to the target's dominant label, over the first ``rows`` rows (the batch's
    own samples: RegMixup appends mixed ones)."""
    return logits[:rows].detach().argmax(1).eq(targets[:rows].argmax(1)).sum()


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: Step) -> StepOutput:
    """One optimizer step on one (global-per-rank) batch, mixed whole first.

    A non-finite loss or gradient is guarded on the device: the step's gradients are
    zeroed (the optimizer still applies momentum and weight decay, as for a zero
    gradient), and ``applied`` says so; the trainer sees it at the next sync point.
    """
    optimizer, scaler = step.optimizer, step.precision.scaler
    optimizer.zero_grad(set_to_none=True)
    if step.accum_steps == 1:
        with step.precision.autocast():
            logits, targets = step.mixer.mixed_forward(model, images, labels, epoch)
            loss = step.loss_fn(logits, targets)
        scaler.scale(loss).backward()
        loss, correct = loss.detach(), hits(logits, targets, labels.shape[0])
    else:
        loss, correct = accumulate(model, *step.mixer(images, labels, epoch), labels.shape[0], step)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # clip the true gradients (timm)
        grad_norm = clip_gradients(params, step.clip_grad, step.clip_value)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        # The scaler lowers its scale exactly when it skipped the step (it read its check already).
        return StepOutput(loss, correct, torch.tensor(scaler.get_scale() >= scale, device=loss.device), grad_norm)
    grad_norm = clip_gradients(params, step.clip_grad, step.clip_value)
    total = grad_norm if grad_norm is not None else total_norm(params)
    applied = torch.isfinite(loss) & torch.isfinite(total)
    for p in params:
        p.grad.masked_fill_(~applied, 0.0)
    optimizer.step()
    return StepOutput(loss, correct, applied, grad_norm)


def accumulate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, own: int, step: Step):
    """Forward and backward in ``accum_steps`` micro-batches; gradients sum to the whole batch's.

    Under DDP only the last micro-batch all-reduces (``no_sync`` before it). Accuracy counts
    the first ``own`` rows of the (mixed) batch.
    """
    n, loss, correct, start = images.shape[0], 0.0, 0, 0
    chunks = list(zip(images.tensor_split(step.accum_steps), targets.tensor_split(step.accum_steps)))
    for i, (x, t) in enumerate(chunks):
        quiet = i < len(chunks) - 1 and hasattr(model, "no_sync")
        with model.no_sync() if quiet else nullcontext():
            with step.precision.autocast():
                logits = model(x)
                part = step.loss_fn(logits, t) * (x.shape[0] / n)  # a mean over the whole batch
            step.precision.scaler.scale(part).backward()
        loss, correct = loss + part.detach(), correct + hits(logits, t, max(0, own - start))
        start += x.shape[0]
    return loss, correct


def total_norm(params: List[torch.Tensor]) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def clip_gradients(params: List[torch.Tensor], mode: Optional[str], value: float) -> Optional[torch.Tensor]:
    """timm's ``dispatch_clip_grad`` (norm, value or AGC); returns the total norm before clipping."""
    if mode is None:
        return None
    from timm.utils import dispatch_clip_grad  # timm's model registry (0.6 s): only with clip_grad on

    norm = total_norm(params)
    dispatch_clip_grad(params, value, mode=mode)
    return norm


# --------------------------------------------------------------------------- the loop


class Tally:
    """Device-side sums of the epoch so far, read by the host only at sync points."""

    KEYS = ("loss_sum", "correct", "seen", "skipped", "run", "longest_run", "first_bad", "last_bad", "grad_norm")

    def __init__(self, progress: EpochProgress, device: torch.device) -> None:
        start = [progress.loss_sum, progress.correct, progress.seen, 0, 0, 0, -1, -1, float("nan")]
        self.values = torch.tensor(start, dtype=torch.float64, device=device)

    def add(self, out: StepOutput, batch: int, step: int) -> None:
        v, ok = self.values, out.applied
        bad = (~ok).double()
        run = (v[4] + 1) * bad
        first = torch.where((v[6] < 0) & ~ok, float(step), v[6])
        update = [v[0] + torch.where(ok, out.loss.double() * batch, 0.0), v[1] + ok * out.correct, v[2] + ok * batch,
                  v[3] + bad, run, torch.maximum(v[5], run), first, torch.where(ok, v[7], float(step)),
                  out.grad_norm.double() if out.grad_norm is not None else v[8]]
        self.values = torch.stack(update)

    def read(self) -> Dict[str, float]:
        """The host's one read (a sync). ``skipped``, ``longest_run`` and ``first_bad`` count from
        the previous read; the sums from the epoch's start."""
        values = dict(zip(self.KEYS, self.values.tolist()))
        self.values[3] = 0.0
        self.values[5] = self.values[4]
        self.values[6] = -1.0
        return values


class Part:
    """A piece of the run called by the :class:`Trainer` at named moments; override what you need.

    A part receives what it needs when it is made, keeps its own state, and gives it to the
    checkpoint under its ``name`` (``state_dict`` / ``load_state_dict``, as Lightning's callbacks)."""

    name = ""

    def epoch_start(self, trainer: "Trainer", steps: int) -> None: ...

    def step_end(self, trainer: "Trainer", out: StepOutput) -> None: ...

    def sync(self, trainer: "Trainer", stats: Dict[str, float]) -> None: ...

    def epoch_end(self, trainer: "Trainer", record: Dict[str, Any]) -> None: ...

    def eval_end(self, trainer: "Trainer", record: Dict[str, Any]) -> None: ...

    def stop(self, trainer: "Trainer", error: Optional[BaseException]) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


@dataclass
class Trainer:
    """Runs epochs of steps and calls its parts; everything else lives in the parts.

    ``state`` is where the run is (the next batch to train is batch ``state.step`` of epoch
    ``state.epoch``); ``history`` holds the records of the epochs done.
    """

    model: nn.Module  # what trains: the model, or its DDP / torch.compile wrapper
    loader: Any  # the training split's loader: set_epoch, iter_from, len
    step: Step
    schedule: Any  # mixtrain.train.optim.Schedule: step_update after each update, step after each epoch
    state: TrainState
    epochs: int
    device: torch.device
    schedule_metric: Optional[str] = None  # the record key a plateau schedule steps on (the run's objective)
    log_every: int = 50
    checkpoint_every: Optional[int] = None  # trainer.checkpoint_every_steps
    world_size: int = 1
    history: List[Dict[str, Any]] = field(default_factory=list)
    parts: List[Part] = field(default_factory=list)
    stop_requested: Callable[[], bool] = lambda: False
    # Whether to stop after this step, the same on every rank, from this rank's stop_requested()
    # (mixtrain.runtime.distributed.StopVote); one process: the flag itself.
    stop_vote: Callable[[bool], bool] = lambda asked: asked
    startup_time: Optional[float] = None  # seconds from this job's start to its first batch (runtime/clock.py)
    startup_reported: bool = False
    done: bool = False  # a part may end the run after the epoch it is in (debug=overfit: the batches are fit)

    def call(self, event: str, *args) -> None:
        for part in self.parts:
            getattr(part, event)(self, *args)

    def fit(self) -> None:
        try:
            for epoch in range(self.state.epoch, self.epochs):
                self.train_epoch(epoch)
                if self.done:
                    break
        except BaseException as ex:
            self.call("stop", ex)
            raise
        self.call("stop", None)

    def sync_due(self, step: int) -> bool:
        return step % self.log_every == 0 or bool(self.checkpoint_every and step % self.checkpoint_every == 0)

    def sync(self, tally: Tally, steps: int) -> Dict[str, float]:
        """Read the tally (this rank's sums go to the checkpoint), agree over ranks, call ``sync``."""
        local = tally.read()
        self.state.progress = EpochProgress(local["loss_sum"], local["correct"], int(local["seen"]))
        summed = distributed.all_reduce_sum(torch.tensor(
            [local["loss_sum"], local["correct"], local["seen"], float(self.stop_requested())], dtype=torch.float64,
            device=self.device)).tolist()
        stats = {**local, "loss_sum": summed[0], "correct": summed[1], "seen": summed[2], "stop": summed[3] > 0,
                 "steps": steps, "elapsed": time.perf_counter() - self.t_epoch}
        self.call("sync", stats)
        return stats

    def train_epoch(self, epoch: int) -> None:
        state, loader = self.state, self.loader
        state.epoch = epoch
        loader.set_epoch(epoch)
        self.model.train()
        tally, steps, self.t_epoch, images = Tally(state.progress, self.device), len(loader), time.perf_counter(), 0
        self.first_step = state.step
        self.call("epoch_start", steps)
        for step, (x, y) in enumerate(loader.iter_from(state.step), start=state.step):
            if self.startup_time is None:  # the first batch of this process is here
                self.startup_time = clock.since_start()
            out = train_step(self.model, x, y, epoch, self.step)
            tally.add(out, y.shape[0], step)
            state.step, state.global_step, images = step + 1, state.global_step + 1, images + y.shape[0]
            self.schedule.step_update(state.global_step)
            self.call("step_end", out)
            stop = self.stop_vote(self.stop_requested())  # a host flag: no device read
            if (stop or self.sync_due(step + 1)) and step + 1 < steps:
                self.sync(tally, steps)
        stats = self.sync(tally, steps)
        seconds, seen = time.perf_counter() - self.t_epoch, stats["seen"]
        nan = float("nan")
        record: Dict[str, Any] = {"epoch": epoch, "train_loss": stats["loss_sum"] / seen if seen else nan,
                                  "train_acc": 100.0 * stats["correct"] / seen if seen else nan,
                                  "lr": self.schedule.lr(),
                                  "img_per_s": images * self.world_size / max(seconds, 1e-9) if images else nan}
        if not self.startup_reported and self.startup_time is not None:
            record["startup_time"] = self.startup_time  # imports, data, model, workers: to the first batch
            self.startup_reported = True
        self.call("epoch_end", record)  # evaluation adds val_* (and ema_val_*)
        # As timm's train.py: after the evaluation, with its metric (a plateau's; the others ignore it).
        self.schedule.step(epoch + 1, record.get(self.schedule_metric) if self.schedule_metric else None)
        record["epoch_time"] = time.perf_counter() - self.t_epoch
        record["train_time"] = seconds
        record["eval_time"] = record["epoch_time"] - seconds  # evaluation and its extras: outside training
        self.history.append(record)
        state.epoch, state.step, state.progress = epoch + 1, 0, EpochProgress()
        self.call("eval_end", record)  # checkpoints, metrics line, summary


@torch.inference_mode()
def evaluate(model: nn.Module, loader, precision: Precision, keep: bool = False) -> ClassificationMeter:
    """Top-1, top-5, NLL and ECE sums on clean (never mixed) data; ``.compute()`` for the values.

    ``keep=True``: the meter also keeps this rank's logits and labels (``meter.kept``).
    """
    model.eval()
    meter = ClassificationMeter(device=next(model.parameters()).device, keep=keep)
    for images, labels in loader:
        with precision.autocast():
            logits = model(images)
        meter.update(logits, labels)
    # Each rank saw its own shard: add the sums (never average per-rank metrics; ECE is
    # not an average of per-rank ECEs).
    distributed.all_reduce_sum(meter.sums)
    return meter
