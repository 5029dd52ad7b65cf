"""Test helpers: compose the real configs, and make tiny datasets inside the test."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from mixtrain.config import config_dir, to_object
from mixtrain.options import register_configs

TESTS = Path(__file__).resolve().parent  # tests/, where helpers.py lives (on sys.path: conftest.py)
REPO = TESTS.parent

# Small, fast, CPU-only settings for runs made in tests.
TINY = [
    "trainer.device=cpu",
    "trainer.epochs=1",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.num_workers=0",
    "trainer.log_every=1",
    "trainer.amp=false",  # fp32 whatever the CPU: results comparable across machines
]

CLASS_COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 40)]


def compose_config(*overrides: str, config_name: str = "train"):
    """The composed DictConfig for these overrides (what Hydra would hand the task)."""
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def make_config(*overrides: str, config_name: str = "train"):
    """The validated config object for these overrides."""
    return to_object(compose_config(*overrides, config_name=config_name))


def class_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 uint8 image whose colour says its class, with noise: easy to learn, not trivial."""
    base = np.array(CLASS_COLORS[label % len(CLASS_COLORS)], dtype=np.float32)
    img = base + rng.normal(0, 40, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, classes: Sequence[str] = ("ant", "bee", "cat"), per_class: int = 8,
                      val_per_class: int = 4, size: int = 32, splits: Sequence[str] = ("train", "val"),
                      ext: str = "png", seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.<ext>`` with class-coloured noisy images."""
    rng = np.random.default_rng(seed)
    for split, n in zip(splits, (per_class, val_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(label, size, rng)).save(folder / f"{i:04d}.{ext}")
    return root


def make_cifar10_folder(root: Path, monkeypatch, n_train: int = 60, n_test: int = 21, seed: int = 0) -> Path:
    """torchvision's CIFAR-10 on-disk format with tiny batches; its checksums are patched to match."""
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(seed)
    base = root / CIFAR10.base_folder
    base.mkdir(parents=True, exist_ok=True)

    def write(name: str, n: int) -> list:
        labels = [int(x) for x in rng.integers(0, 4, size=n)]
        data = np.stack([class_image(y, 32, rng).transpose(2, 0, 1).reshape(-1) for y in labels])
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        return [name, hashlib.md5((base / name).read_bytes()).hexdigest()]

    per_batch = n_train // 5
    train_list = [write(f"data_batch_{i}", per_batch) for i in range(1, 6)]
    test_list = [write("test_batch", n_test)]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    meta = dict(CIFAR10.meta, md5=hashlib.md5((base / "batches.meta").read_bytes()).hexdigest())
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(CIFAR10, "meta", meta)
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m mixtrain ARGS`` in a subprocess."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mixtrain", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


EVENTS: list = []  # what Recorder callbacks saw, in order


class Recorder:
    """A Hydra callback (``_target_: helpers.Recorder``) that records each event as ``name.event``."""

    def __init__(self, name: str, raise_on: str = "") -> None:
        self.name, self.raise_on = name, raise_on

    def __getattr__(self, event: str):
        if not event.startswith("on_"):
            raise AttributeError(event)

        def record(**kwargs):
            EVENTS.append(f"{self.name}.{event}")
            if event == self.raise_on:
                raise RuntimeError(f"{self.name} fails in {event}")

        return record


# 30 steps per epoch, a step checkpoint every 5: long enough to be stopped inside an epoch.
SLOW = ["model=resnet20", "optim.lr=0.02", "trainer.epochs=3", "trainer.batch_size=4", "trainer.eval_batch_size=64",
        "trainer.device=cpu", "trainer.num_workers=0", "dataset.image_size=16", "trainer.checkpoint_every_steps=5"]


def tiny_folder(data: Path) -> list:
    """The overrides of the shared tiny run (``tiny_run`` in conftest.py): a cached 16 px folder, :data:`TINY`."""
    return ["dataset=imagefolder", f"dataset.root={data}", "dataset.cache=true", "dataset.image_size=16", *TINY]


def folder_args(root: Path, cache: bool = True) -> list:
    return ["dataset=imagefolder", f"dataset.root={root}", f"dataset.cache={str(cache).lower()}"]


def start(args, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "mixtrain", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def position(run: Path) -> tuple:
    """(epoch, step) of the run's last.pt, or (-1, -1) before there is one."""
    from mixtrain.artifacts import checkpoint
    from mixtrain.errors import MixtrainError

    try:
        state = checkpoint.load(run / "last.pt")["state"]
    except MixtrainError:
        return -1, -1
    return state["epoch"], state["step"]


def wait_until_inside(run: Path, proc: subprocess.Popen, epoch: int = 1, timeout=300.0) -> None:
    """Until a step checkpoint of ``epoch`` is on disk (so the process is in the middle of it)."""
    deadline, last_mtime = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended too early: {proc.stderr.read()}")
        path = run / "last.pt"
        mtime = path.stat().st_mtime_ns if path.exists() else None
        if mtime != last_mtime:
            last_mtime = mtime
            at_epoch, step = position(run)
            if at_epoch == epoch and step >= 5:
                return
        time.sleep(0.05)
    raise AssertionError("timed out")


SLOW_STEP_MODULE = '''"""A linear classifier whose every training step takes `seconds` (tests of stops during a slow step)."""
import time
from pathlib import Path

from torch import nn


class SlowStepNet(nn.Module):
    def __init__(self, num_classes, seconds=1.0, mark=""):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)
        self.seconds, self.mark, self.steps = seconds, mark, 0

    def forward(self, x):
        if self.training:
            self.steps += 1
            if self.mark:  # the step that has just begun, for the test to time its signal
                Path(self.mark).write_text(str(self.steps))
            time.sleep(self.seconds)
        return self.fc(x.mean((2, 3)))
'''


def slow_step_args(cwd: Path, seconds: float, mark: Path) -> list:
    """Overrides for a model whose training steps take ``seconds`` each and which writes the number of
    the step it begins to ``mark``; its module goes into ``cwd``, where ``python -m mixtrain`` imports it."""
    (Path(cwd) / "slow_step.py").write_text(SLOW_STEP_MODULE)
    return ["model=custom", "model._target_=slow_step.SlowStepNet", f"+model.kwargs.seconds={seconds}",
            f"+model.kwargs.mark={mark}"]


def step_begun(mark: Path):
    """The number of the training step that has begun (``mark`` of :func:`slow_step_args`), or None before
    the first (or while the mark is being rewritten: under torchrun every rank writes it)."""
    text = mark.read_text().strip() if mark.exists() else ""
    return int(text) if text.isdigit() else None


def wait_for_step(mark: Path, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Until a training step has begun (``mark`` of :func:`slow_step_args`); returns its number."""
    deadline = time.monotonic() + timeout
    while (begun := step_begun(mark)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no training step began: {proc.stderr.read() if proc.poll() is not None else ''}")
        time.sleep(0.02)
    return begun
