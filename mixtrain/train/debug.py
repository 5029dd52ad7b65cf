"""What each ``debug`` option (:mod:`mixtrain.config.debug`) does to a run.

A :class:`DebugMode` answers the few questions :class:`~mixtrain.train.training.Training` asks
while it assembles a run (how many epochs the loop runs, which data and mixing it trains on,
which parts watch it) and says what it found at the end. Without ``debug=`` the base mode
changes nothing.

- ``fast``: the run's own config for its first epoch (the trainer keys of ``conf/debug/fast.yaml``
  cut the batches, the workers and the checkpoints).
- ``overfit``: a few fixed batches (a seeded sample of the training split, read as evaluation reads
  it: no augmentation), no mixing, no smoothing, until train top-1 reaches 100%.
- ``profile``: ``torch.profiler`` over steps of the real config, with the share of each step spent
  waiting for its batch (:mod:`mixtrain.train.profiling`).
- ``anomaly``: autograd's anomaly detection and a check of every mixed target row, for the first steps.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from mixtrain import layout
from mixtrain.config import AugmentConfig, TrainConfig
from mixtrain.config.registry import entry_of
from mixtrain.data import Data, LoaderOptions, check_bad_images, open_split, resolve_workers
from mixtrain.errors import MixtrainError, RunStopped
from mixtrain.runtime import distributed
from mixtrain.train.engine import Part, Trainer
from mixtrain.train.monitor import RunMonitor
from mixtrain.train.profiling import Profiler, TimedLoader


class DebugMode:
    """A run without a debug option: it changes nothing."""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    def epochs(self, configured: int) -> int:
        """Epochs the loop runs (``trainer.epochs`` unless the mode cuts it)."""
        return configured

    def schedule_epochs(self, configured: int) -> int:
        """Epochs the learning-rate schedule spans."""
        return configured

    def data(self, run: TrainConfig, device: torch.device, rank: int, world_size: int) -> Optional[Data]:
        """The data to train on instead of the configured splits; None: the configured ones."""
        return None

    def augment(self, augment: Any) -> Any:
        """The augment config the run mixes with."""
        return augment

    def parts(self, training) -> List[Part]:
        """Its parts (before evaluation, so that an epoch's end sees them first); it may wrap what it watches."""
        return []

    def result(self) -> Optional[Dict[str, Any]]:
        """What it found, for ``summary.json`` (``debug``)."""
        return None if self.cfg is None else {"name": self.cfg.name}


class Fast(DebugMode):
    """``debug=fast``: the first ``debug.epochs`` epochs of the run's own schedule."""

    def epochs(self, configured: int) -> int:
        return min(self.cfg.epochs, configured)


# --------------------------------------------------------------------------- overfit


class Overfit(DebugMode):
    """``debug=overfit``: fixed batches, no mixing, no augmentation, until train top-1 reaches 100%."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.part: Optional[OverfitCheck] = None
        self.images = 0

    def epochs(self, configured: int) -> int:
        return self.cfg.max_epochs

    def schedule_epochs(self, configured: int) -> int:
        return self.cfg.max_epochs

    def data(self, run: TrainConfig, device: torch.device, rank: int, world_size: int) -> Data:
        trainer = run.trainer
        # Read as evaluation reads a split (no crop, flip, erasing or label noise), a seeded sample
        # spread over the classes (eval_subset): the same batches every epoch.
        options = LoaderOptions(trainer.batch_size // world_size, device, resolve_workers(trainer.num_workers),
                                trainer.channels_last, run.seed, rank, world_size, max_batches=self.cfg.batches)
        split = open_split(run.dataset, "train", False, options)
        check_bad_images(run.dataset, [split])
        if len(split.classes) < 2:
            raise MixtrainError(f"the data has {len(split.classes)} class: a classifier needs at least 2")
        self.images = len(split.loader.subset) if split.loader.subset is not None else split.loader.num_samples
        note = (f"debug=overfit: training on {self.cfg.batches} fixed batch(es), {self.images} training images "
                "(unaugmented, unmixed, unsmoothed), also the val figures, until train top-1 reaches 100%")
        return Data(split.loader, split.loader, split.classes, list(split.skipped), 0, split.stored_size, [note])

    def augment(self, augment: Any) -> AugmentConfig:
        return AugmentConfig(loss=augment.loss, bce_target_threshold=augment.bce_target_threshold)

    def parts(self, training) -> List[Part]:
        self.part = OverfitCheck(training.monitor, self.cfg.batches, self.images)
        return [self.part]

    def result(self) -> Dict[str, Any]:
        part = self.part
        return {"name": self.cfg.name, "batches": self.cfg.batches, "images": self.images,
                "reached_100": part is not None and part.reached is not None,
                "epoch": part.reached if part is not None else None,
                "best_train_acc": part.best if part is not None else None}


class OverfitCheck(Part):
    """Ends the run at the first epoch whose train top-1 is 100%; says at the end whether it got there."""

    name = "overfit"

    def __init__(self, monitor: RunMonitor, batches: int, images: int) -> None:
        self.monitor, self.batches, self.images = monitor, batches, images
        self.reached: Optional[int] = None
        self.best, self.best_epoch = 0.0, -1

    def epoch_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        accuracy = record["train_acc"]
        if accuracy > self.best:
            self.best, self.best_epoch = accuracy, record["epoch"]
        if accuracy >= 100.0:
            self.reached = record["epoch"]
            trainer.done = True

    def stop(self, trainer: Trainer, error: Optional[BaseException]) -> None:
        if error is not None:
            return
        fixed = f"the {self.batches} fixed batch(es) ({self.images} images)"
        if self.reached is not None:
            self.monitor.info(f"debug=overfit: train top-1 reached 100% on {fixed} at epoch {self.reached}")
        else:
            self.monitor.info(f"[yellow]debug=overfit: train top-1 did not reach 100% on {fixed} in "
                              f"{trainer.epochs} epochs[/] (best {self.best:.2f}% at epoch {self.best_epoch}): check "
                              "the model's output, the loss and optim.lr, or raise debug.max_epochs")


# --------------------------------------------------------------------------- profile


class Profile(DebugMode):
    """``debug=profile``: the first epoch, cut after the warmup and the profiled steps."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.part: Optional[Profiler] = None

    def epochs(self, configured: int) -> int:
        return min(self.cfg.epochs, configured)

    def parts(self, training) -> List[Part]:
        # Every rank takes the same steps (under torchrun); the first one profiles and writes.
        loader = TimedLoader(training.data.train, self.cfg.warmup + self.cfg.steps)
        training.data.train = loader
        if not distributed.context().is_main:
            return []
        self.part = Profiler(self.cfg, loader, training.device, training.run_dir / layout.PROFILE, training.monitor)
        return [self.part]

    def result(self) -> Dict[str, Any]:
        return {"name": self.cfg.name, **(self.part.found if self.part is not None else {})}


# --------------------------------------------------------------------------- anomaly


class CheckedMixer:
    """The run's mixer, whose targets are checked row by row for the first ``steps`` steps: each row
    must sum to what the method promises (``Mixer.row_sums``: 1, a distribution) with no negative weight."""

    def __init__(self, mixer, steps: int, state) -> None:
        self.mixer, self.steps, self.state, self.checked = mixer, steps, state, 0

    def __getattr__(self, name: str):  # active, targets, state_dict, ...: the mixer's own
        return getattr(self.mixer, name)

    def __call__(self, images, labels, epoch):
        images, targets = self.mixer(images, labels, epoch)
        self.check(targets, labels.shape[0])
        return images, targets

    def mixed_forward(self, model, images, labels, epoch):
        logits, targets = self.mixer.mixed_forward(model, images, labels, epoch)
        self.check(targets, labels.shape[0])
        return logits, targets

    def check(self, targets: torch.Tensor, own: int) -> None:
        if self.checked >= self.steps:
            return
        self.checked += 1
        expected = self.mixer.row_sums(targets.shape[0], own).to(targets.device)
        sums = targets.detach().float().sum(1)
        bad = ((sums - expected).abs() > 1e-4 * expected.clamp_min(1.0)) | (targets.detach() < 0).any(1)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise RunStopped(f"debug=anomaly: at epoch {self.state.epoch} step {self.state.step}, {int(bad.sum())} of "
                             f"{targets.shape[0]} mixed target rows are not distributions (row {row} sums to "
                             f"{float(sums[row]):.4f}, expected {float(expected[row]):g}; its least weight "
                             f"{float(targets[row].min()):.4f}): the method's label weights do not add up (a soft-label "
                             "mismatch); fix how it mixes its targets")


class Anomaly(DebugMode):
    """``debug=anomaly``: anomaly detection and checked targets for the first ``debug.steps`` steps."""

    def parts(self, training) -> List[Part]:
        training.step.mixer = CheckedMixer(training.step.mixer, self.cfg.steps, training.state)
        return [AnomalyWatch(self.cfg.steps, training.monitor)]


class AnomalyWatch(Part):
    """Autograd's anomaly detection on for the first steps; its error becomes the run's one line."""

    name = "anomaly"

    def __init__(self, steps: int, monitor: RunMonitor) -> None:
        self.steps, self.monitor, self.seen, self.on = steps, monitor, 0, False

    def epoch_start(self, trainer: Trainer, steps: int) -> None:
        if self.seen < self.steps and not self.on:
            torch.autograd.set_detect_anomaly(True)
            self.on = True

    def step_end(self, trainer: Trainer, out) -> None:
        if not self.on:
            return
        self.seen += 1
        if self.seen >= self.steps:
            self.off()
            self.monitor.info(f"debug=anomaly: the first {self.seen} steps had finite gradients (autograd anomaly "
                              "detection) and mixed target rows that sum as they should; the run goes on unchecked")

    def off(self) -> None:
        if self.on:
            torch.autograd.set_detect_anomaly(False)
            self.on = False

    def stop(self, trainer: Trainer, error: Optional[BaseException]) -> None:
        checking = self.on
        self.off()
        if checking and isinstance(error, RuntimeError) and "returned nan values" in str(error):
            found = str(error).strip().splitlines()[0]
            raise RunStopped(f"debug=anomaly: autograd at epoch {trainer.state.epoch} step {trainer.state.step}: "
                             f"{found} (the forward call that made it: the 'Error detected in ...' warning above)")


# --------------------------------------------------------------------------- the modes

MODES = {"fast": Fast, "overfit": Overfit, "profile": Profile, "anomaly": Anomaly}


def debug_mode(cfg: Any) -> DebugMode:
    """The mode of a run's ``debug`` config (a user's own option of one of these schemas included)."""
    if cfg is None:
        return DebugMode()
    entry = entry_of("debug", cfg)
    if entry is None or entry.name not in MODES:
        raise MixtrainError(f"debug {getattr(cfg, 'name', cfg)!r} is not a debug mode: start its YAML from one of "
                            f"{', '.join(f'/schema/debug/{name}' for name in MODES)}")
    return MODES[entry.name](cfg)
