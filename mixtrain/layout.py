"""What a run dir holds, named once: its files, and the keys of its ``summary.json``.

Every module that writes or reads a run's records takes the names from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

# --------------------------------------------------------------------------- files

SUMMARY = "summary.json"  # the run's status, final metrics and resolved config (rewritten every epoch)
METRICS = "metrics.jsonl"  # one line per epoch
METRICS_CSV = "metrics.csv"  # the same rows as a table (logger=csv)
LAST = "last.pt"  # the checkpoint to continue from
BEST = "best.pt"  # the best epoch by the selection metric
LOGITS = "val_logits.pt"  # the final validation logits and labels: paired comparisons, pooled intervals
RELIABILITY = "reliability.png"
TRAIN_LOG = "train.log"
TENSORBOARD = "tb"
HYDRA = ".hydra"
EVAL = "eval.json"  # what `mixtrain eval` writes (beside its own reliability.png and val_logits.pt)
PREVIEW = "preview.png"
MULTIRUN = "multirun.yaml"  # what Hydra writes at the top of a sweep dir
SWEEP_LOGGERS = "loggers.json"  # in a sweep dir: the trackers' runs that group its jobs (an MLflow parent run)
COMPARE = "compare.json"
REPORT_FILES = ("report.csv", "runs.csv", "report.png")
PROFILE = "profile"  # debug=profile: a folder of the run dir holding the three below
PROFILE_TRACE = "trace.json"  # torch.profiler's Chrome trace (chrome://tracing, ui.perfetto.dev)
PROFILE_OPERATORS = "operators.txt"  # the top operators by self time
PROFILE_SUMMARY = "profile.json"  # steps, time a step, the share of it spent waiting for the batch

# The files that show a training run has written into a dir (even one whose first epoch crashed).
RUN_FILES = (SUMMARY, METRICS, LAST)
# What a command leaves in a dir it wrote: a dir holding any of these belongs to that command.
RECORDS = (HYDRA, *RUN_FILES, EVAL, PREVIEW, MULTIRUN)
# Every name a command writes in its dir (files, then folders; globs for the names that vary): a dir
# where one is a symbolic link, or not a regular file, is refused (its writes would land elsewhere).
WRITTEN = (SUMMARY, METRICS, LAST, BEST, LOGITS, RELIABILITY, TRAIN_LOG, EVAL, PREVIEW, MULTIRUN, COMPARE,
           *REPORT_FILES, "epoch-*.pt", "*.calibration.json", f"{METRICS}.replaced-*")
WRITTEN_DIRS = (HYDRA, TENSORBOARD)


# --------------------------------------------------------------------------- epochs

# Epochs are numbered from 0 everywhere (issue 36): metrics.jsonl, summary.json (best_epoch,
# final_epoch), epoch-NNN.pt, the terminal's table and lines, TensorBoard, eval.json, compare.


def checkpoint_epoch(state: dict) -> Tuple[int, Optional[int]]:
    """``(epoch, step)`` of a checkpoint's training state (``TrainState`` as saved): at an epoch's
    end, that epoch and None; in the middle of one (``trainer.checkpoint_every_steps``), the epoch in
    progress and the steps of it done."""
    epoch, step = int(state["epoch"]), int(state.get("step", 0))
    return (epoch, step) if step else (epoch - 1, None)


def epoch_label(epoch: int, step: Optional[int] = None) -> str:
    """``epoch 3``, or ``epoch 4 step 120`` for a checkpoint saved in the middle of epoch 4."""
    return f"epoch {epoch}" if step is None else f"epoch {epoch} step {step}"


def epoch_checkpoint(epoch: int) -> str:
    """``epoch-007.pt``: one of the ``trainer.keep_best`` best epochs."""
    return f"epoch-{epoch:03d}.pt"


def calibration_file(checkpoint_name: str) -> str:
    """``best.calibration.json`` for ``best.pt``: the temperature stored with that checkpoint."""
    stem = checkpoint_name[:-3] if checkpoint_name.endswith(".pt") else checkpoint_name
    return f"{stem}.calibration.json"


# --------------------------------------------------------------------------- summary.json

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"

# Numeric keys of summary.json that a sweep can optimise (the `objective` key), best first.
OBJECTIVES = ("best_val_acc1", "final_val_acc1", "final_val_acc5", "final_val_ece", "final_val_nll",
              "best_ema_val_acc1", "final_ema_val_acc1", "final_ema_val_ece", "final_ema_val_nll",
              "final_train_loss", "img_per_s", "wall_time_s")
# The metrics `mixtrain report` tabulates per group of runs.
REPORTED = ("best_val_acc1", "final_val_acc1", "final_val_ece", "final_val_ece_ts", "final_val_nll")


def objective_metric(objective: str):
    """The ``metrics.jsonl`` key an objective is made from, and whether it is better ``min`` or ``max``
    (what a plateau schedule steps on); None when it has no per-epoch value (``wall_time_s``)."""
    key = objective.split("_", 1)[1] if objective.startswith(("best_", "final_")) else objective
    if key == "wall_time_s":
        return None
    return key, "min" if key.endswith(("_ece", "_nll", "_loss")) else "max"


def holds_run(run_dir: Path) -> bool:
    """Whether a run has written into ``run_dir`` (even one whose first epoch crashed)."""
    return any((run_dir / name).exists() for name in RUN_FILES)
