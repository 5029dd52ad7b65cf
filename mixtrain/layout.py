"""What a run dir holds, named once: its files, and the keys of its ``summary.json``.

Every module that writes or reads a run's records takes the names from here.
"""

from __future__ import annotations

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

# The files that show a training run has written into a dir (even one whose first epoch crashed).
RUN_FILES = (SUMMARY, METRICS, LAST)
# What a command leaves in a dir it wrote: a dir holding any of these belongs to that command.
RECORDS = (HYDRA, *RUN_FILES, EVAL, PREVIEW, MULTIRUN)


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
