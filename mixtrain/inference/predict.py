"""``mixtrain predict``: classify new images with a trained model (:mod:`mixtrain.artifacts.model`).

``mixtrain eval ... calibrate=true`` stores the fitted temperature with the model, as
``<checkpoint>.calibration.json`` beside the checkpoint (``best.calibration.json``); ``predict`` and ``export`` read it.
Preprocessing is the checkpoint's own evaluation transform (:func:`mixtrain.data.eval_image_transform`),
the code evaluation itself runs.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch
from PIL import Image

from mixtrain.artifacts.calibration import calibration_path, read_calibration
from mixtrain.artifacts.model import LoadedModel, load_model
from mixtrain.data import resolve_workers
from mixtrain.data.images import UNREADABLE, load_rgb
from mixtrain.errors import MixtrainError
from mixtrain.files import forget_inherited_claims, write_atomic
from mixtrain.runtime.precision import resolve_device

# --------------------------------------------------------------------------- inputs


def list_inputs(inputs: str) -> List[str]:
    """One image, a folder (recursively, any extension PIL reads), a glob, or a text file of paths."""
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
    if path.exists():  # neither a file nor a folder
        raise MixtrainError(f"inputs={inputs} is {special_kind(path)}, not a file or a folder: pass an image, a "
                            "folder, a glob or a text file of paths")
    raise MixtrainError(f"inputs={inputs} does not exist: pass an image, a folder, a glob or a text file of paths")


def special_kind(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is, in words."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


class ImageFiles(torch.utils.data.Dataset):
    """``(uint8 image, index, error)``; an unreadable file gives a blank image and its error."""

    def __init__(self, paths: Sequence[str], transform, size: int) -> None:
        self.paths, self.transform, self.size = list(paths), transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_rgb(self.paths[i])), i, ""
        except UNREADABLE as ex:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), i, f"{type(ex).__name__}: {ex}"[:200]


# --------------------------------------------------------------------------- predict


def predict_batches(loaded: LoadedModel, paths: Sequence[str], batch_size: int, workers: int, calibrated: bool,
                    tta: str) -> Iterator[Tuple[List[str], torch.Tensor, List[Tuple[str, str]]]]:
    """``(paths, probabilities, errors)`` batch by batch: memory stays constant whatever the number of images."""
    loader = torch.utils.data.DataLoader(ImageFiles(paths, loaded.transform, loaded.image_size), batch_size=batch_size,
                                         num_workers=workers, shuffle=False, worker_init_fn=forget_inherited_claims)
    for images, index, errors in loader:
        ok = torch.tensor([not e for e in errors])
        failed = [(paths[int(i)], e) for i, e in zip(index, errors) if e]
        good = [paths[int(i)] for i, e in zip(index, errors) if not e]
        probs = loaded.probabilities(loaded.preprocess(images[ok]), calibrated, tta) if good else torch.empty(0)
        yield good, probs.cpu(), failed


OUT_FORMATS = (".csv", ".jsonl")
# OWASP's CSV injection rule: a cell a spreadsheet would read as a formula starts with one of these;
# a leading ' makes it text (https://owasp.org/www-community/attacks/CSV_Injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell (a path, a class name, a reason) that a spreadsheet shows and never runs."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


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
            self.csv.writerow([csv_text(path), *[v for pair in zip(map(csv_text, classes), (f"{p:.6f}" for p in probs))
                                                 for v in pair]])


def errors_file(out: Path) -> Path:
    """Where the unreadable inputs of ``out`` are listed: ``<stem>_errors.csv`` beside it."""
    return out.with_name(f"{out.stem}_errors.csv")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``out=`` that cannot take the predictions, or whose error list would
    replace (or remove) a file already there."""
    if out.is_dir():
        raise MixtrainError(f"out={out} is a directory: name a file in it, e.g. out={out / 'preds.csv'}")
    if out.suffix.lower() not in OUT_FORMATS:
        raise MixtrainError(f"out={out} must end in .csv or .jsonl (JSON lines): pick one of those names")
    if out.exists() and not overwrite:
        raise MixtrainError(f"{out} exists: pick another out=, or pass overwrite=true")
    if os.path.lexists(errors_file(out)) and not overwrite:
        raise MixtrainError(f"{errors_file(out)} exists (predict lists unreadable inputs there): pick another out=, "
                            "or pass overwrite=true")
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
    out_stream = out_stream or sys.stdout
    out = Path(os.path.expanduser(cfg.out))
    errors_path = errors_file(out)
    check_out(out, cfg.overwrite)
    paths = list_inputs(cfg.inputs)
    loaded = load_model(cfg.checkpoint, resolve_device(cfg.device), cfg.weights, cfg.trust)
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
        try:
            rows = [("path", "reason"), *((csv_text(path), csv_text(reason)) for path, reason in failed)]
            write_atomic(errors_path, lambda f: csv.writer(f).writerows(rows),
                         overwrite=cfg.overwrite)
        except FileExistsError:
            raise MixtrainError(f"{errors_path} was written by another process meanwhile: the predictions are in "
                                f"{out}; pick another out= for the list of unreadable files") from None
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
