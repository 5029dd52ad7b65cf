"""What a run says before it trains: its first lines and warnings, from what was built."""

from __future__ import annotations

from typing import Any, Dict, List

from mixtrain.config import MixConfig
from mixtrain.config.registry import advice
from mixtrain.mixing import method_of
from mixtrain.mixing.preview import mixed_batch_grid
from mixtrain.mixing.softness import stacked_smoothing_warning


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


def introduce(run) -> None:
    """The run's first lines (``run``: a :class:`~mixtrain.train.training.Training`): what trains on
    what, at which sizes and precision, where its weights and preprocessing came from, and any warning."""
    cfg, data, monitor = run.cfg, run.data, run.monitor
    train_size, eval_size = (cfg.dataset.size(train) or data.train.height for train in (True, False))
    sizes = f"{train_size} px" if train_size == eval_size else f"train {train_size} px / eval {eval_size} px"
    lr = f"lr {run.lr:.4g}"
    if cfg.optim.lr_base_batch:
        lr += f" (optim.lr {cfg.optim.lr:g} x {cfg.trainer.batch_size}/{cfg.optim.lr_base_batch})"
    monitor.info(
        f"[bold]mixtrain[/] {cfg.model.name} on {run.option('dataset')} ({data.train.num_samples} train / "
        f"{data.val.num_samples} val, {data.num_classes} classes, {sizes}) | {run.device} {run.precision.name}"
        f"{f' x {run.ctx.world_size} processes' if run.ctx.enabled else ''} | augment={run.option('augment')} | "
        f"{lr} | run dir {run.run_dir}"
    )
    chosen = getattr(cfg.model, "chosen_by", None)
    for line in [chosen, *run.weights_notes, describe_preprocessing(cfg.dataset, cfg.model.name)]:
        if line:
            monitor.info(line)
    for key, line in enumerate(advice(cfg)):
        monitor.warn_once(f"advice{key}", line)
    if run.precision.warning:
        monitor.warn_once("precision", run.precision.warning)
    if data.stored_size and data.stored_size < train_size:
        monitor.warn_once("upscaled", f"every cached image is at most {data.stored_size} px and is upscaled to "
                                      f"dataset.image_size={train_size} ({(train_size / data.stored_size) ** 2:.0f}x "
                                      f"the compute): set dataset.image_size={data.stored_size} to keep their size")
    for note in data.notes:
        monitor.info(note)
    warn_stacked_smoothing(run)
    warn_unreadable(run)
    if run.resumed:
        monitor.info(f"resumed from {cfg.resume} at epoch {run.state.epoch} step {run.state.step}")
        for note in (run.resume_note, run.metrics_note):
            if note:
                monitor.info(note)
    elif run.loggers.wants_images and run.mixer.active(0) and method_of(cfg.augment).previewable:
        run.loggers.image("mixing/batch", mixed_batch_grid(data.train, data.classes, cfg.augment, cfg.dataset,
                                                           cfg.trainer.epochs, cfg.seed))


def warn_stacked_smoothing(run) -> None:
    """Mixing and label smoothing together soften the targets twice: say so when, measured over
    many draws on the first batch, they are softer than DeiT's setting (mixing/softness.py)."""
    augment, data = run.cfg.augment, run.data
    if not (isinstance(augment, MixConfig) and augment.label_smoothing > 0 and run.mixer.active(0)):
        return
    data.train.set_epoch(0)
    images, labels = next(iter(data.train))
    warning = stacked_smoothing_warning(augment, data.num_classes, images, labels, run.cfg.seed + 2_000_000)
    if warning:
        run.monitor.warn_once("smoothing", warning)


def warn_unreadable(run) -> None:
    """Say once per run that unreadable image files are being skipped, with the first few."""
    paths = run.data.unreadable()
    if paths:
        shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
        run.monitor.warn_once("unreadable", f"skipping {len(paths)} unreadable image(s) "
                                            f"(dataset.on_bad_image=skip): {shown}")
