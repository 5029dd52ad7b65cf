"""Using a trained model: ``load_model``, the stored temperature, and ``mixtrain predict``.

``mixtrain eval ... calibrate=true`` stores the fitted temperature with the model, as
``<checkpoint>.calibration.json`` beside the checkpoint (``best.calibration.json``); ``predict`` and ``export`` read it.
Preprocessing is the checkpoint's own evaluation transform (:func:`mixtrain.data.eval_image_transform`),
the code evaluation itself runs.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mixtrain.errors import MixtrainError

LEGACY_CALIBRATION_FILE = "calibration.json"  # one per run dir, before each checkpoint had its own


def calibration_path(checkpoint_path: Path) -> Path:
    """Where a checkpoint's temperature is stored: ``best.calibration.json`` beside ``best.pt``."""
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.calibration.json")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_calibration(checkpoint_path: Path, temperature: Dict[str, Any]) -> Path:
    """``<checkpoint>.calibration.json``: T, where it was fitted, ECE before/after, the checkpoint's sha256.

    It goes into the checkpoint's run dir, so this takes that dir's lock: never while a
    training process writes it."""
    from mixtrain.files import claim_dir, write_json_atomic

    if not claim_dir(checkpoint_path.parent):
        raise MixtrainError(f"{checkpoint_path.parent} is being written by a running mixtrain process: calibrate "
                            "after it ends (its checkpoints still change)")
    path = calibration_path(checkpoint_path)
    write_json_atomic(path, {"temperature": temperature["value"], "fit_on": temperature["fit_on"],
                             "ece_before": temperature["before"]["ece"], "ece_after": temperature["after"]["ece"],
                             "checkpoint": checkpoint_path.name, "checkpoint_sha256": sha256_of(checkpoint_path)})
    return path


def read_calibration(checkpoint_path: Path) -> Optional[Dict[str, Any]]:
    """The stored calibration of this checkpoint, or None (absent, or fitted on another checkpoint file)."""
    digest = None
    for path in (calibration_path(checkpoint_path), checkpoint_path.parent / LEGACY_CALIBRATION_FILE):
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        digest = digest or sha256_of(checkpoint_path)
        if isinstance(saved, dict) and saved.get("checkpoint_sha256") == digest:
            return saved
    return None


@dataclass
class LoadedModel:
    """A trained model ready to use: eval mode, its preprocessing, classes and temperature."""

    model: nn.Module
    transform: Any  # PIL image -> uint8 [3, H, W]
    mean: List[float]
    std: List[float]
    classes: List[str]
    temperature: float  # 1.0 when the model was not calibrated
    image_size: int
    config: Any  # the run's TrainConfig
    checkpoint: Path

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> normalized float on the model's device."""
        from mixtrain.data.device_loader import normalize, normalizer

        device = next(self.model.parameters()).device
        scale, shift = normalizer(self.mean, self.std, device)
        return normalize(images_uint8.to(device), scale, shift, channels_last=False)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, calibrated: bool = True, tta: str = "none") -> torch.Tensor:
        """Softmax of ``logits / T`` for normalized images; ``tta=flip`` averages with the mirror image."""
        t = self.temperature if calibrated else 1.0
        probs = (self.model(images).float() / t).softmax(1)
        if tta == "flip":
            probs = (probs + (self.model(images.flip(-1)).float() / t).softmax(1)) / 2
        return probs


def saved_class_names(dataset, num_classes: int) -> List[str]:
    """Class names for a checkpoint written before checkpoints held them: from the data, else indices."""
    from mixtrain.config import FolderConfig, MiniConfig

    try:
        if isinstance(dataset, MiniConfig):
            import numpy as np

            from mixtrain.data.mini import MINI_PATH

            with np.load(MINI_PATH) as z:
                return [str(c) for c in z["classes"]]
        if isinstance(dataset, FolderConfig):
            from torchvision.datasets.folder import find_classes

            return find_classes(str(Path(dataset.root).expanduser() / dataset.val_split))[0]
    except (OSError, FileNotFoundError):
        pass
    return [str(i) for i in range(num_classes)]


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "raw") -> LoadedModel:
    """A checkpoint (file or run dir) as a :class:`LoadedModel`, for scripts: ``mixtrain.load_model(path)``."""
    from mixtrain.train import checkpoint
    from mixtrain.config import config_from_dict
    from mixtrain.data import eval_image_transform, image_size
    from mixtrain.evaluate.evaluation import build_model, resolve_checkpoint

    ckpt = resolve_checkpoint(path).resolve()
    state = checkpoint.load(ckpt)
    cfg = config_from_dict(state["config"])
    classes = state.get("classes") or saved_class_names(cfg.dataset, state["num_classes"])
    model = build_model(cfg, state, state["num_classes"], ckpt, torch.device(device), weights)
    calibration = read_calibration(ckpt)
    size = image_size(cfg.dataset, False) or 32
    return LoadedModel(model, eval_image_transform(cfg.dataset), list(cfg.dataset.mean), list(cfg.dataset.std),
                       list(classes), calibration["temperature"] if calibration else 1.0, size, cfg, ckpt)


# --------------------------------------------------------------------------- inputs


def list_inputs(inputs: str) -> List[str]:
    """One image, a folder (recursively, any extension PIL reads), a glob, or a text file of paths."""
    from PIL import Image

    extensions = tuple(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
    path = Path(os.path.expanduser(inputs))
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not found:
            raise MixtrainError(f"no images in {path} (looked for {', '.join(sorted(extensions)[:6])}, ...): "
                                "pass inputs=FOLDER with image files")
        return found
    if path.is_file():
        if path.suffix.lower() in (".txt", ".lst"):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as ex:
                raise MixtrainError(f"{path} is not UTF-8 text (byte {ex.start}): save the list of paths as "
                                    "UTF-8, one path per line") from None
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if not lines:
                raise MixtrainError(f"{path} lists no paths: one image path per line")
            return lines
        return [str(path)]
    matches = sorted(glob.glob(os.path.expanduser(inputs), recursive=True))
    if any(c in inputs for c in "*?[") and matches:
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            raise MixtrainError(f"inputs={inputs} matches {len(matches)} folder(s) and no file: end the glob in a "
                                "file pattern (e.g. DIR/**/*.jpg), or pass the folder itself")
        return files
    raise MixtrainError(f"inputs={inputs} does not exist: pass an image, a folder, a glob or a text file of paths")


class ImageFiles(torch.utils.data.Dataset):
    """``(uint8 image, index, error)``; an unreadable file gives a blank image and its error."""

    def __init__(self, paths: Sequence[str], transform, size: int) -> None:
        self.paths, self.transform, self.size = list(paths), transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from mixtrain.data.folder import UNREADABLE, load_rgb

        try:
            return self.transform(load_rgb(self.paths[i])), i, ""
        except UNREADABLE as ex:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), i, f"{type(ex).__name__}: {ex}"[:200]


# --------------------------------------------------------------------------- predict


def predict_batches(loaded: LoadedModel, paths: Sequence[str], batch_size: int, workers: int, calibrated: bool,
                    tta: str) -> Iterator[Tuple[List[str], torch.Tensor, List[Tuple[str, str]]]]:
    """``(paths, probabilities, errors)`` batch by batch: memory stays constant whatever the number of images."""
    from mixtrain.files import forget_inherited_claims

    loader = torch.utils.data.DataLoader(ImageFiles(paths, loaded.transform, loaded.image_size), batch_size=batch_size,
                                         num_workers=workers, shuffle=False, worker_init_fn=forget_inherited_claims)
    for images, index, errors in loader:
        ok = torch.tensor([not e for e in errors])
        failed = [(paths[int(i)], e) for i, e in zip(index, errors) if e]
        good = [paths[int(i)] for i, e in zip(index, errors) if not e]
        probs = loaded.probabilities(loaded.preprocess(images[ok]), calibrated, tta) if good else torch.empty(0)
        yield good, probs.cpu(), failed


OUT_FORMATS = (".csv", ".jsonl")


class Writer:
    """Rows of top-k predictions to CSV, or JSON lines when the name ends in ``.jsonl``, into an open file."""

    def __init__(self, file, jsonl: bool, topk: int) -> None:
        self.file, self.jsonl = file, jsonl
        self.csv = None if jsonl else csv.writer(file)
        if self.csv:
            self.csv.writerow(["path", *[f"{kind}{k + 1}" for k in range(topk) for kind in ("class", "prob")]])

    def write(self, path: str, classes: List[str], probs: List[float]) -> None:
        if self.jsonl:
            self.file.write(json.dumps({"path": path, "classes": classes, "probs": probs}) + "\n")
        else:
            self.csv.writerow([path, *[v for pair in zip(classes, (f"{p:.6f}" for p in probs)) for v in pair]])


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``out=`` that cannot take the predictions."""
    if out.is_dir():
        raise MixtrainError(f"out={out} is a directory: name a file in it, e.g. out={out / 'preds.csv'}")
    if out.suffix.lower() not in OUT_FORMATS:
        raise MixtrainError(f"out={out} must end in .csv or .jsonl (JSON lines): pick one of those names")
    if out.exists() and not overwrite:
        raise MixtrainError(f"{out} exists: pick another out=, or pass overwrite=true")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        raise MixtrainError(f"cannot write out={out}: {existing} {why}; pick another out=")


def predict(cfg, out_stream=None) -> Dict[str, Any]:
    """``mixtrain predict``: classify ``cfg.inputs``; write ``cfg.out`` and, for unreadable files, ``<out>_errors.csv``.

    Both files are written whole or not at all (the one atomic writer): a killed run leaves
    no partial file to refuse on the next one.
    """
    from mixtrain.data import resolve_workers
    from mixtrain.files import write_atomic
    from mixtrain.train.precision import resolve_device

    out_stream = out_stream or sys.stdout
    out = Path(os.path.expanduser(cfg.out))
    errors_path = out.with_name(f"{out.stem}_errors.csv")
    check_out(out, cfg.overwrite)
    paths = list_inputs(cfg.inputs)
    loaded = load_model(cfg.checkpoint, resolve_device(cfg.device), cfg.weights)
    calibrated = cfg.calibrated if cfg.calibrated is not None else loaded.temperature != 1.0
    if calibrated and loaded.temperature == 1.0 and read_calibration(loaded.checkpoint) is None:
        raise MixtrainError(f"calibrated=true but {calibration_path(loaded.checkpoint)} is absent or belongs "
                            "to another checkpoint: run mixtrain eval checkpoint=... calibrate=true first")
    t = loaded.temperature if calibrated else 1.0
    print(f"mixtrain predict: temperature T={t:.4f} ({'calibrated, ' + calibration_path(loaded.checkpoint).name if calibrated else 'raw softmax'})"
          f" | {len(paths)} inputs | {loaded.config.model.name}, {len(loaded.classes)} classes, {loaded.image_size} px",
          file=out_stream, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    topk = min(cfg.topk, len(loaded.classes))
    failed: List[Tuple[str, str]] = []
    start = time.perf_counter()

    def write_predictions(file) -> None:
        writer, done, last = Writer(file, out.suffix.lower() == ".jsonl", topk), 0, 0.0
        for good, probs, bad in predict_batches(loaded, paths, cfg.batch_size, resolve_workers(cfg.num_workers),
                                                 calibrated, cfg.tta):
            failed.extend(bad)
            if good:
                values, indices = probs.topk(topk, dim=1)
                for path, v, i in zip(good, values.tolist(), indices.tolist()):
                    writer.write(path, [loaded.classes[k] for k in i], v)
            done += len(good) + len(bad)
            now = time.perf_counter()
            if now - last > 5 or done == len(paths):
                last = now
                print(f"{done}/{len(paths)} images, {done / max(now - start, 1e-9):.0f} img/s", file=out_stream,
                      flush=True)

    try:
        write_atomic(out, write_predictions, overwrite=cfg.overwrite)
    except FileExistsError:  # another predict wrote it meanwhile
        raise MixtrainError(f"{out} was written by another process meanwhile: pick another out=, or pass "
                            "overwrite=true") from None
    if failed:
        write_atomic(errors_path, lambda f: csv.writer(f).writerows([("path", "reason"), *failed]))
    else:
        errors_path.unlink(missing_ok=True)  # a list from an earlier run of this out= would be stale
    classified = len(paths) - len(failed)
    seconds = time.perf_counter() - start
    print(f"classified {classified} of {len(paths)} images in {seconds:.1f}s ({classified / max(seconds, 1e-9):.0f} "
          f"img/s); {len(failed)} unreadable{f' (listed in {errors_path})' if failed else ''}; {out}",
          file=out_stream, flush=True)
    if classified == 0:
        raise MixtrainError(f"none of the {len(paths)} inputs could be read: see {errors_path}")
    return {"classified": classified, "unreadable": len(failed), "temperature": t, "out": str(out),
            "img_per_s": classified / max(seconds, 1e-9)}
