"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit(cfg) -> metrics``."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from mixtrain import checkpoint
from mixtrain.config import TrainConfig, TrainerConfig, asdict
from mixtrain.data import Data, Loader, build_data
from mixtrain.errors import MixtrainError
from mixtrain.losses import Loss, create_loss
from mixtrain.metrics import ClassificationMeter
from mixtrain.mixing import Mixer, create_mixer
from mixtrain.models import create_model
from mixtrain.monitor import RunMonitor, Throughput, write_json_atomic
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
    log_every: int = 50,
    after_step: Optional[Callable[[int], None]] = None,
) -> Dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy against the dominant target, img/s."""
    model.train()
    device = next(model.parameters()).device
    # Running sums stay on the device; reading them forces a sync, so it is rare.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    speed = Throughput()
    steps = len(loader)
    progress = monitor.progress(epoch, steps) if monitor else None
    last_refresh = 0.0
    with progress or nullcontext():
        task = progress.add_task("train", total=steps, completed=start_step, status="") if progress else None
        for step, (images, labels) in enumerate(loader.iter_from(start_step), start=start_step):
            with precision.autocast():
                logits, targets = mixer.forward(model, images, labels, epoch)
                loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
            scheduler.step()

            batch = labels.shape[0]
            loss_sum += loss.detach().double() * batch
            correct += logits.detach().argmax(1).eq(targets.argmax(1)).sum()
            seen += batch
            speed.add(batch)
            if monitor and (step + 1) % log_every == 0:
                global_step = epoch * steps + step + 1
                monitor.scalar("train/loss_step", loss.item(), global_step)
                monitor.scalar("train/lr_step", optimizer.param_groups[0]["lr"], global_step)
            if after_step is not None:
                after_step(step)
            if progress:
                now = time.monotonic()
                if now - last_refresh > 0.5 or step == steps - 1:
                    last_refresh = now
                    status = f"loss {loss_sum.item() / seen:.4f}  {speed.rate:.0f} img/s"
                    progress.update(task, completed=step + 1, status=status)
                else:
                    progress.advance(task)
    if seen == 0:
        return {"train_loss": float("nan"), "train_acc": float("nan"), "img_per_s": float("nan")}
    return {
        "train_loss": loss_sum.item() / seen,
        "train_acc": 100.0 * correct.item() / seen,
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


# --------------------------------------------------------------------------- fit


@dataclass
class TrainState:
    """Where a run is: the next batch to train is (epoch, step)."""

    epoch: int = 0
    step: int = 0
    best_acc1: float = -math.inf
    best_epoch: int = -1


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def fit(cfg: TrainConfig, run_dir: Path, monitor: Optional[RunMonitor] = None) -> Dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; return the summary (also written to ``summary.json``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_state = checkpoint.load(cfg.resume) if cfg.resume else None
    if resume_state is None and (run_dir / "metrics.jsonl").exists():
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
    state = TrainState()
    history: list = []
    if resume_state is not None:
        state, history = restore(resume_state, model, optimizer, scheduler, precision, mixer)
    train_model = torch.compile(model) if cfg.trainer.compile else model

    monitor = monitor or RunMonitor(run_dir)
    monitor.info(
        f"[bold]mixtrain[/] {cfg.model.name} on "
        f"{cfg.dataset.name} ({data.train.num_samples} train / {data.val.num_samples} val, "
        f"{data.num_classes} classes) | {device} {precision.name} | augment={cfg.augment.name} | run dir {run_dir}"
    )
    if resume_state is not None:
        monitor.info(f"resumed from {cfg.resume} at epoch {state.epoch}")
    elif monitor.enabled and mixer.active(0):
        grid = mixed_batch_grid(data, cfg.augment, cfg.dataset, cfg.trainer.epochs, cfg.seed)
        monitor.image("mixing/batch", grid)

    def save(name: str) -> None:
        if cfg.trainer.checkpoint:
            checkpoint.save_atomic(snapshot(model, optimizer, scheduler, precision, mixer, cfg, state, history),
                                   run_dir / name)

    for epoch in range(state.epoch, cfg.trainer.epochs):
        data.train.set_epoch(epoch)
        t_epoch = time.perf_counter()
        train_stats = train_one_epoch(train_model, data.train, optimizer, scheduler, precision, mixer, loss_fn,
                                      epoch, monitor, start_step=state.step, log_every=cfg.trainer.log_every)
        record: Dict[str, Any] = {"epoch": epoch, **train_stats, "lr": optimizer.param_groups[0]["lr"]}
        final = epoch + 1 == cfg.trainer.epochs
        if (epoch + 1) % cfg.trainer.eval_every == 0 or final:
            meter = evaluate(train_model, data.val, precision)
            record.update({f"val_{k}": v for k, v in meter.compute().items()})
            if final and monitor.enabled:
                save_reliability_diagram(meter.ece_bins, run_dir / "reliability.png", f"epoch {epoch}")
                monitor.image("calibration/reliability", reliability_image(meter.ece_bins, f"epoch {epoch}"), epoch)
        record["epoch_time"] = time.perf_counter() - t_epoch
        history.append(record)
        state.epoch, state.step = epoch + 1, 0
        is_best = "val_acc1" in record and record["val_acc1"] > state.best_acc1
        if is_best:
            state.best_acc1, state.best_epoch = record["val_acc1"], epoch
        monitor.epoch_end(record)
        save("last.pt")
        if is_best:
            save("best.pt")

    summary = summarize(cfg, history, state, time.perf_counter() - t_start, data)
    write_json_atomic(run_dir / "summary.json", summary)
    monitor.info(
        f"done: best val acc {summary['best_val_acc1']:.2f} (epoch {state.best_epoch}), final val acc "
        f"{summary['final_val_acc1']:.2f}, ECE {summary['final_val_ece']:.4f}, NLL {summary['final_val_nll']:.4f} "
        f"in {summary['wall_time_s']:.0f}s | {run_dir / 'summary.json'}"
    )
    monitor.close()
    return summary


def summarize(cfg: TrainConfig, history: list, state: TrainState, wall_time: float, data: Data) -> Dict[str, Any]:
    evaluated = [r for r in history if "val_acc1" in r]
    final = evaluated[-1] if evaluated else {}
    rates = [r["img_per_s"] for r in history if not math.isnan(r.get("img_per_s", float("nan")))]
    return {
        "status": "completed",
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
        "label_noise": cfg.dataset.label_noise,
        "labels_changed": data.labels_changed,
        "config": asdict(cfg),
    }


# --------------------------------------------------------------------------- checkpoint state


def snapshot(model: nn.Module, optimizer, scheduler, precision: Precision, mixer: Mixer, cfg: TrainConfig,
             state: TrainState, history: list) -> Dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": precision.scaler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_acc1": state.best_acc1,
        "best_epoch": state.best_epoch,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "mixer": mixer.generator.get_state(),
        },
        "config": asdict(cfg),
        "history": history,
    }


def restore(saved: Dict[str, Any], model: nn.Module, optimizer, scheduler, precision: Precision, mixer: Mixer):
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    precision.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    mixer.generator.set_state(saved["rng"]["mixer"])
    state = TrainState(saved["epoch"], saved["step"], saved["best_acc1"], saved["best_epoch"])
    return state, list(saved["history"])
