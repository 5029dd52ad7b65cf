"""The ``debug`` group: ways to check a config rather than train it (lightning-hydra-template's
``debug`` configs, the mixtrain way). ``debug=fast | overfit | profile | anomaly`` composes with any
run (a recipe included); each option's YAML in ``conf/debug/`` starts from its schema here and
sets the trainer keys it needs. What each does to the run lives in :mod:`mixtrain.train.debug`.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from mixtrain.config.errors import at_least
from mixtrain.config.registry import Entry, register


@dataclass
class DebugConfig:
    """The keys of every debug option."""

    name: str = MISSING


@dataclass
class FastConfig(DebugConfig):
    """Prove a config end to end in seconds: its first epoch on a few batches, no workers, no checkpoints."""

    name: str = "fast"
    # Epochs to run of the run's own schedule (trainer.epochs keeps its meaning: a recipe's checks hold).
    epochs: int = 1

    def __post_init__(self) -> None:
        at_least(self.epochs, 1, "debug.epochs")


@dataclass
class OverfitConfig(DebugConfig):
    """Train on a few fixed batches, unmixed and unaugmented, until train top-1 reaches 100% or say it did not."""

    name: str = "overfit"
    # Fixed batches of trainer.batch_size training images: a seeded sample spread over the classes.
    batches: int = 1
    max_epochs: int = 200  # passes over the batches at most (the schedule spans them); it stops at 100%

    def __post_init__(self) -> None:
        at_least(self.batches, 1, "debug.batches")
        at_least(self.max_epochs, 1, "debug.max_epochs")


@dataclass
class ProfileConfig(DebugConfig):
    """torch.profiler over steps of the real config: a Chrome trace, the top operators, the data-wait share."""

    name: str = "profile"
    warmup: int = 3  # steps run before profiling (first batches, allocator, cudnn autotuning)
    steps: int = 10  # steps profiled, after the warmup; the run stops after them
    rows: int = 25  # operators in the table (by self time)
    epochs: int = 1  # epochs to run of the run's own schedule (one: the profiled steps are in it)

    def __post_init__(self) -> None:
        at_least(self.warmup, 0, "debug.warmup")
        at_least(self.steps, 1, "debug.steps")
        at_least(self.rows, 1, "debug.rows")
        at_least(self.epochs, 1, "debug.epochs")


@dataclass
class AnomalyConfig(DebugConfig):
    """Autograd anomaly detection, and a check that every mixed target row sums to 1, for the first steps."""

    name: str = "anomaly"
    steps: int = 20  # the first steps checked (anomaly detection slows each step several times)

    def __post_init__(self) -> None:
        at_least(self.steps, 1, "debug.steps")


for _kind, _schema in (("fast", FastConfig), ("overfit", OverfitConfig), ("profile", ProfileConfig),
                       ("anomaly", AnomalyConfig)):
    register(Entry("debug", _kind, _schema))
