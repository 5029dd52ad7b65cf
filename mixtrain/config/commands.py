"""Schemas of the commands that use a trained model: eval, predict, export."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from mixtrain.config.errors import at_least, choice, require, valid_device, valid_seed


@dataclass
class EvalConfig:
    """``mixtrain eval``: calibration, temperature scaling and FGSM robustness of a checkpoint."""

    checkpoint: str = MISSING  # a .pt file, or a run dir (its best.pt, else last.pt)
    # None: the checkpoint's own dataset; `dataset.key=value` changes keys of it, and
    # `dataset=NAME` (another dataset) starts from that option's defaults.
    dataset: Any = None
    # Data for fitting the temperature: a fraction in (0, 1) of the validation set (a
    # fixed split drawn from `seed`; the rest reports), or a split name: `train`, or a
    # folder under dataset.root for dataset=imagefolder (the whole validation set reports).
    heldout: str = "0.5"
    # FGSM epsilons in pixel levels of 1/255, on [0, 1] images before normalization;
    # [] skips the attack.
    fgsm_eps: List[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    batch_size: int = 256  # evaluation batch size
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # the held-out split
    weights: str = "raw"  # raw: the trained weights | ema: the EMA weights (runs with trainer.ema.enabled)
    # Bootstrap resamples of the evaluated images for the 95% intervals (0: none), drawn from `seed`.
    bootstrap: int = 1000
    # Store the fitted temperature with the model: <checkpoint>.calibration.json beside it, which
    # `mixtrain predict` and `mixtrain export` read.
    calibrate: bool = False
    tta: str = "none"  # none | flip: average the softmax of each image and its mirror image
    # Keys of the checkpoint's stored config whose code you accept: a `_target_` (an import path) or a
    # `pipe:` URL (a shell command) of a file from someone else is refused otherwise: `trust=[model._target_]`.
    trust: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        choice(self.weights, ("raw", "ema"), "weights")
        at_least(self.bootstrap, 0, "bootstrap")
        choice(self.tta, ("none", "flip"), "tta")
        path = Path(os.path.expanduser(self.checkpoint))
        require(path.exists(), "checkpoint", "does not exist: pass a .pt file or a run dir", self.checkpoint)
        fraction = heldout_fraction(self.heldout)
        if fraction is not None:
            require(0.0 < fraction < 1.0, "heldout", "must be a fraction in (0, 1) or a split name", self.heldout)
        else:
            require(self.heldout not in ("", "val"), "heldout",
                     "must be a fraction of the validation set or another split (train, or a folder name)", self.heldout)
        require(all(0.0 <= e <= 255.0 for e in self.fgsm_eps), "fgsm_eps",
                 "must be pixel levels in [0, 255] (8 means 8/255)", list(self.fgsm_eps))
        at_least(self.batch_size, 1, "batch_size")
        valid_device(self.device, "device")
        valid_seed(self.seed, "seed")


@dataclass
class PredictConfig:
    """``mixtrain predict``: classify new images with a trained model."""

    checkpoint: str = MISSING  # a .pt file, or a run dir (its best.pt, else last.pt)
    inputs: str = MISSING  # an image, a folder (recursive), a glob, or a text file of paths
    out: str = "preds.csv"  # .csv, or .jsonl for JSON lines; unreadable files go to <out>_errors.csv
    topk: int = 5  # classes listed per image, most probable first
    calibrated: Optional[bool] = None  # None: true when the checkpoint has a <checkpoint>.calibration.json
    tta: str = "none"  # none | flip: average the softmax of each image and its mirror image
    batch_size: int = 64  # images per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: Any = "auto"  # decoding workers: a count, or auto
    weights: str = "raw"  # raw | ema
    overwrite: bool = False  # replace an existing out file
    # Keys of the checkpoint's stored config whose import path (`_target_`) you accept: a file from someone
    # else is refused otherwise, `trust=[model._target_]` (its data, and so a `pipe:` URL, is never opened).
    trust: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        at_least(self.topk, 1, "topk")
        choice(self.tta, ("none", "flip"), "tta")
        at_least(self.batch_size, 1, "batch_size")
        choice(self.weights, ("raw", "ema"), "weights")
        valid_device(self.device, "device")


@dataclass
class ExportConfig:
    """``mixtrain export``: the model in a format other tools load."""

    checkpoint: str = MISSING  # a .pt file, or a run dir (its best.pt, else last.pt)
    format: str = "safetensors"  # safetensors | onnx | torchscript
    out: Optional[str] = None  # a directory; default: export-<format> beside the checkpoint
    weights: str = "raw"  # raw | ema
    opset: Optional[int] = None  # ONNX opset; None: the exporter's default for the installed torch
    overwrite: bool = False  # replace an existing out directory
    # Keys of the checkpoint's stored config whose import path (`_target_`) you accept: a file from someone
    # else is refused otherwise, `trust=[model._target_]` (its data, and so a `pipe:` URL, is never opened).
    trust: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        choice(self.format, ("safetensors", "onnx", "torchscript"), "format")
        choice(self.weights, ("raw", "ema"), "weights")


def heldout_fraction(heldout: str) -> Optional[float]:
    """``EvalConfig.heldout`` as a fraction, or None when it names a split."""
    try:
        return float(heldout)
    except ValueError:
        return None
