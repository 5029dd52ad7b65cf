"""``mixtrain eval``: the claims of the mixup papers, measured on one checkpoint.

Clean top-1/top-5, NLL and Brier; calibration as ECE (the training meter's function),
MCE and adaptive ECE; temperature scaling fitted on held-out data, with NLL and ECE
before and after; top-1 under FGSM. Everything lands in ``eval.json`` (read by
``mixtrain compare``), a two-panel ``reliability.png`` and a table on the terminal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING
from rich.console import Console
from torch import nn

from mixtrain import layout
from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.calibration import claim_calibration, write_calibration
from mixtrain.artifacts.logits import save_logits
from mixtrain.artifacts.model import build_model, resolve_checkpoint
from mixtrain.config import (DatasetConfig, EvalConfig, TrainConfig, describe_config_error,
                             heldout_fraction, schema_for)
from mixtrain.config.overrides import override_key, quote_value
from mixtrain.config.trust import check_stored
from mixtrain.data import FolderConfig, LoaderOptions, check_bad_images, open_split, resolve_workers, unreadable_so_far
from mixtrain.errors import MixtrainError
from mixtrain.evaluate.bootstrap import bootstrap_intervals
from mixtrain.evaluate.calibration import (TEMPERATURE_BOUNDS, calibration_metrics, fit_temperature, heldout_indices,
                                           reliability_sums)
from mixtrain.evaluate.reliability import save_reliability_panels
from mixtrain.evaluate.robustness import fgsm_accuracy, fgsm_predictions
from mixtrain.files import write_json_atomic
from mixtrain.mixing import describe_augment
from mixtrain.runtime.precision import resolve_device

# --------------------------------------------------------------------------- inputs


def dataset_override_keys(overrides: Sequence[str]) -> List[str]:
    """The dataset keys an override list sets (``dataset.root=X`` -> ``root``)."""
    keys = [override_key(o)[len("dataset."):] for o in overrides if override_key(o).startswith("dataset.")]
    return [k.split(".", 1)[0] for k in keys]


def eval_overrides(overrides: List[str]) -> List[str]:
    """With ``dataset.key=value`` but no ``dataset=NAME``: select the checkpoint's dataset first.

    The eval config has no dataset by default (the checkpoint's own is used), so Hydra
    would refuse ``dataset.root=...`` on its own; naming the checkpoint's dataset makes
    the keys valid, and :func:`eval_dataset_config` then lays them over the saved values.
    """
    if not dataset_override_keys(overrides) or any(override_key(o) == "dataset" for o in overrides):
        return overrides
    given = [o for o in overrides if override_key(o) == "checkpoint"]
    if not given:
        raise MixtrainError("checkpoint is required: pass checkpoint=PATH (a .pt file or a run dir)")
    path = resolve_checkpoint(override_value(given[-1]))
    stored = checkpoint.load(path)["config"]
    trusted = [override_value(o) for o in overrides if override_key(o) == "trust"]
    check_stored(stored, path, passed_keys(dataset_override_keys(overrides), trusted[-1] if trusted else []))
    saved = stored["dataset"]
    # Keys the option cannot default (dataset.root of imagefolder) come from the checkpoint too.
    changed = set(dataset_override_keys(overrides))
    required = [f.name for f in dataclasses.fields(schema_for("dataset", saved))
                if f.default == MISSING and f.name != "name" and f.name not in changed and f.name in saved]
    return [f"dataset={saved['name']}", *(f"dataset.{key}={quote_value(saved[key])}" for key in required), *overrides]


def passed_keys(dataset_keys: Sequence[str], trust: Sequence[str]) -> List[str]:
    """The keys of a checkpoint's config that eval's command line passes: the dataset keys it sets
    (their stored values are not used) and those it trusts."""
    return [*(f"dataset.{key}" for key in dataset_keys), *map(str, trust or [])]


def override_value(override: str) -> Any:
    """The value of one ``key=value`` override as Hydra parses it (quotes removed)."""

    try:
        return OverridesParser.create().parse_overrides([override])[0].value()
    except Exception as ex:  # Hydra's parse errors
        raise MixtrainError(describe_config_error(ex)) from None


def run_option(checkpoint: Path, group: str) -> Optional[str]:
    """The option the run chose for ``group`` (``photos`` for a user's ``dataset/photos.yaml``), from
    the ``summary.json`` beside the checkpoint; None where there is none to read."""
    try:
        option = json.loads((checkpoint.parent / layout.SUMMARY).read_text())["options"][group]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return option if isinstance(option, str) else None


def eval_dataset_config(saved: DatasetConfig, chosen: Optional[DatasetConfig], changed: Sequence[str]) -> DatasetConfig:
    """The dataset to evaluate on: the checkpoint's, with the keys the user changed.

    Naming another dataset (``dataset=cifar100`` for a CIFAR-10 model, say) starts from
    that option's defaults instead. ``replace`` re-runs the schema's checks.
    """
    if chosen is None:
        return saved
    if chosen.name != saved.name or type(chosen) is not type(saved):
        return chosen
    return dataclasses.replace(saved, **{key: getattr(chosen, key) for key in changed if hasattr(chosen, key)})


@torch.inference_mode()
def logits_of(model: nn.Module, loader, tta: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of every batch, float32 on the CPU, in loader order (full precision).

    ``tta=flip``: the log of the mean softmax of each image and its mirror (logits of the average).
    """
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        out = model(images).float()
        if tta == "flip":
            out = ((out.softmax(1) + model(images.flip(-1)).float().softmax(1)) / 2).log()
        logits.append(out.cpu())
        labels.append(targets.cpu())
    if not logits:
        raise MixtrainError("the evaluation split is empty: check dataset.root and dataset.val_split")
    return torch.cat(logits), torch.cat(labels)


def describe_run(train_cfg: TrainConfig) -> str:
    """A short name for a run's training recipe: ``ERM``, ``mixup a=0.2``, ``cutmix a=1 noise 20%``."""
    name = describe_augment(train_cfg.augment)
    if train_cfg.dataset.label_noise:
        name += f" noise {100 * train_cfg.dataset.label_noise:g}%"
    return name

# --------------------------------------------------------------------------- evaluation


def temperature_scaling(cfg: EvalConfig, val_logits: torch.Tensor, val_labels: torch.Tensor,
                        heldout: Optional[Tuple[torch.Tensor, torch.Tensor, str]] = None
                        ) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Fit T on held-out data; NLL/ECE before and after on the data that reports.

    With ``heldout=None`` T is fitted on a fraction of the validation set (``cfg.heldout``)
    and the rest reports; otherwise on ``(logits, labels, description)`` of another split,
    and the whole validation set reports. Returns the JSON section and the reliability
    bin sums before and after scaling.
    """
    n = len(val_labels)
    if heldout is None:
        fit_idx, report_idx = heldout_indices(n, heldout_fraction(cfg.heldout), cfg.seed)
        fit_logits, fit_labels = val_logits[fit_idx], val_labels[fit_idx]
        report_logits, report_labels = val_logits[report_idx], val_labels[report_idx]
        fit_on = f"{len(fit_idx)} of the {n} val images (heldout={cfg.heldout}, seed {cfg.seed})"
        report_on = f"the other {len(report_idx)} val images"
    else:
        fit_logits, fit_labels, fit_on = heldout
        report_logits, report_labels = val_logits, val_labels
        report_on = f"all {n} val images"
    temperature = fit_temperature(fit_logits, fit_labels)
    scaled = report_logits.double() / temperature
    section = {
        "value": temperature,
        "at_bound": temperature in TEMPERATURE_BOUNDS,
        "fit_on": fit_on,
        "fit_samples": len(fit_labels),
        "report_on": report_on,
        "report_samples": len(report_labels),
        "before": calibration_metrics(report_logits, report_labels),
        "after": calibration_metrics(scaled, report_labels),
    }
    sums = {"before": reliability_sums(report_logits, report_labels), "after": reliability_sums(scaled, report_labels)}
    return section, sums


@dataclass
class Target:
    """What an evaluation reads: the checkpoint, the config it was trained with, the split and the model."""

    path: Path
    state: Dict[str, Any]
    train_cfg: Any
    dataset: Any
    options: LoaderOptions
    val: Any
    model: Any


@dataclass
class Measured:
    """What an evaluation found: the clean logits, the fitted temperature, FGSM's predictions."""

    logits: torch.Tensor
    labels: torch.Tensor
    temperature: Dict[str, Any]
    sums: Dict[str, Any]
    eps_levels: List[float]
    attacked: Any
    fgsm: List[Dict[str, Any]]
    unreadable: List[str]


def evaluate_checkpoint(cfg: EvalConfig, out_dir: Path, dataset_keys: Sequence[str] = (),
                        console: Optional[Console] = None) -> Dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; write ``eval.json`` and ``reliability.png`` to ``out_dir``; return the report."""
    out_dir = Path(out_dir)
    if (out_dir / layout.EVAL).exists():
        raise MixtrainError(f"{out_dir} already holds an {layout.EVAL}: pick another hydra.run.dir")
    target = open_target(cfg, dataset_keys)
    announce(target, console)
    measured = measure(cfg, target)
    if measured.unreadable and console is not None:
        shown = ", ".join(measured.unreadable[:3]) + (" ..." if len(measured.unreadable) > 3 else "")
        console.print(f"[yellow]warning:[/] left out {len(measured.unreadable)} unreadable image(s) from every "
                      f"metric: {shown}", highlight=False)
    return write_report(cfg, target, measured, out_dir)


def open_target(cfg: EvalConfig, dataset_keys: Sequence[str]) -> Target:
    """The checkpoint (read as data, its classes held to the data's), the split and the model."""
    path = resolve_checkpoint(cfg.checkpoint).resolve()
    if cfg.calibrate:  # before any work: the checkpoint's run must not be running
        claim_calibration(path)
    state = checkpoint.load(path)
    train_cfg = checkpoint.saved_config(state, path, passed_keys(dataset_keys, cfg.trust))
    dataset = eval_dataset_config(train_cfg.dataset, cfg.dataset, dataset_keys)
    if heldout_fraction(cfg.heldout) is None:
        dataset.split_name(cfg.heldout)  # a split this dataset has, before any data is read
    device = resolve_device(cfg.device)
    # The same factory as training: same size, transform and decoding for the same split.
    options = LoaderOptions(cfg.batch_size, device, resolve_workers(train_cfg.trainer.num_workers),
                            train_cfg.trainer.channels_last)
    if isinstance(dataset, FolderConfig) and not Path(dataset.root).expanduser().is_dir():
        raise MixtrainError(f"the dataset folder {dataset.root} does not exist (moved since training?): "
                            "pass dataset.root=NEW_PATH")
    val = open_split(dataset, "val", False, options)
    check_bad_images(dataset, [val])
    checkpoint.check_classes(state, val.classes, f"cannot evaluate {path} on {dataset.name} val",
                             "evaluate on a dataset with the classes it was trained on")
    model = build_model(train_cfg, state, len(val.classes), path, device, cfg.weights)
    return Target(path, state, train_cfg, dataset, options, val, model)


def announce(target: Target, console: Optional[Console]) -> None:
    """The line that says what is evaluated on what."""
    if console is None:
        return
    train_cfg, dataset = target.train_cfg, target.dataset
    option = run_option(target.path, "dataset") if dataset.name == train_cfg.dataset.name else None
    shown = dataset.name if option in (None, dataset.name) else f"{option} ({dataset.name})"
    epoch = layout.epoch_label(*layout.checkpoint_epoch(target.state["state"]))
    console.print(f"[bold]mixtrain eval[/] {target.path} ({train_cfg.model.name}, {describe_run(train_cfg)}, {epoch}) "
                  f"on {shown} val ({target.val.loader.num_samples} images) | {target.options.device}", highlight=False,
                  soft_wrap=True)  # one line, however long its paths: it is read back (and grepped)


def measure(cfg: EvalConfig, target: Target) -> Measured:
    """The clean logits (with ``tta``), the temperature (fitted on held-out images) and FGSM's predictions."""
    model, dataset = target.model, target.dataset
    logits, labels = logits_of(model, target.val.loader, cfg.tta)
    splits, heldout = [target.val], None
    if heldout_fraction(cfg.heldout) is None:
        fit = open_split(dataset, cfg.heldout, False, target.options)
        check_bad_images(dataset, [fit])
        splits.append(fit)
        fit_logits, fit_labels = logits_of(model, fit.loader, cfg.tta)
        heldout = (fit_logits, fit_labels, f"the {cfg.heldout} split ({len(fit_labels)} images, unaugmented)")
    temperature, sums = temperature_scaling(cfg, logits, labels, heldout)
    eps_levels = [float(e) for e in cfg.fgsm_eps]
    eps_list = [e / 255.0 for e in eps_levels]
    attacked, attacked_labels = fgsm_predictions(model, target.val.loader, eps_list, dataset.mean, dataset.std)
    fgsm = fgsm_accuracy(attacked, attacked_labels, eps_list)
    for row, level in zip(fgsm, eps_levels):
        row["eps_255"] = level
    unreadable = unreadable_so_far([p for s in splits for p in s.skipped], [s.loader for s in splits])
    return Measured(logits, labels, temperature, sums, eps_levels, attacked, fgsm, unreadable)


def write_report(cfg: EvalConfig, target: Target, measured: Measured, out_dir: Path) -> Dict[str, Any]:
    """``val_logits.pt``, ``reliability.png``, the calibration file when asked, then ``eval.json``."""
    train_cfg, logits, labels = target.train_cfg, measured.logits, measured.labels
    out_dir.mkdir(parents=True, exist_ok=True)
    save_logits(out_dir / layout.LOGITS, logits, labels,
                fgsm={"eps_255": measured.eps_levels, "predictions": measured.attacked})
    temperature = measured.temperature
    save_reliability_panels([(measured.sums["before"], f"before scaling (T=1), {temperature['report_samples']} images"),
                             (measured.sums["after"], f"after scaling (T={temperature['value']:.3f})")],
                            out_dir / layout.RELIABILITY)
    report = {
        "checkpoint": str(target.path),
        "weights": cfg.weights,
        # Numbered as metrics.jsonl numbers epochs (from 0); step: how far into that epoch, or None at its end.
        **dict(zip(("epoch", "step"), layout.checkpoint_epoch(target.state["state"]))),
        "run": {"label": describe_run(train_cfg), "model": train_cfg.model.name, "augment": train_cfg.augment.name,
                "label_noise": train_cfg.dataset.label_noise, "seed": train_cfg.seed},
        "dataset": {"name": target.dataset.name, "split": "val", "samples": len(labels),
                    "num_classes": len(target.val.classes), "unreadable": len(measured.unreadable)},
        "clean": calibration_metrics(logits, labels),
        "bootstrap": ({"resamples": cfg.bootstrap, "seed": cfg.seed, "level": 0.95,
                       "clean": bootstrap_intervals(logits, labels, cfg.bootstrap, cfg.seed)} if cfg.bootstrap else None),
        "temperature": temperature,
        "fgsm": measured.fgsm,
        "eval_config": {"heldout": cfg.heldout, "fgsm_eps": measured.eps_levels, "seed": cfg.seed,
                        "weights": cfg.weights, "bootstrap": cfg.bootstrap, "tta": cfg.tta},
        "files": {"reliability": layout.RELIABILITY, "logits": layout.LOGITS},
    }
    if cfg.calibrate:
        report["files"]["calibration"] = str(write_calibration(target.path, temperature))
    write_json_atomic(out_dir / layout.EVAL, report)
    return report
