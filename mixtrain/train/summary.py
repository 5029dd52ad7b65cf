"""A run's figures: ``summary.json``'s metrics, the line a run ends with, and the option each group
was composed from.

Every ``best_*`` figure is the best checkpoint's (issue 36): the epoch ``best.pt`` holds, picked by
the objective's metric; epochs are numbered from 0, as ``metrics.jsonl`` numbers them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from mixtrain import layout
from mixtrain.config import GROUPS, TrainConfig
from mixtrain.data import Data
from mixtrain.files import write_json_atomic


def summarize(history: List[dict], best_epoch: int, nan_skips: int, wall_time: float, data: Data,
              label_noise: float = 0.0, selected_by: str = "val_acc1") -> Dict[str, Any]:
    """The run's figures. Every ``best_*`` one is of the best checkpoint: epoch ``best_epoch``, the one
    ``best.pt`` holds, picked by the objective's metric (``selected_by``); the highest val top-1 of any
    epoch, which may be another epoch, is ``max_val_acc1`` (issue 36)."""
    evaluated = [r for r in history if "val_acc1" in r]
    final = evaluated[-1] if evaluated else {}
    best = next((r for r in evaluated if r["epoch"] == best_epoch), {})
    rates = [r["img_per_s"] for r in history if not math.isnan(r.get("img_per_s", float("nan")))]
    nan = float("nan")
    top = max(evaluated, key=lambda r: r["val_acc1"], default={})
    summary = {
        "epochs": len(history),
        "best_epoch": best_epoch,  # numbered as metrics.jsonl numbers epochs: from 0
        "best_selected_by": selected_by,
        "best_val_acc1": best.get("val_acc1", nan),
        "best_val_nll": best.get("val_nll", nan),
        "best_val_ece": best.get("val_ece", nan),
        "max_val_acc1": top.get("val_acc1", nan),
        "max_val_acc1_epoch": top.get("epoch", -1),
        "final_epoch": final.get("epoch", -1),
        "final_val_acc1": final.get("val_acc1", nan),
        "final_val_acc5": final.get("val_acc5", nan),
        "final_val_ece": final.get("val_ece", nan),
        "final_val_nll": final.get("val_nll", nan),
        "final_val_ece_ts": final.get("val_ece_ts", nan),  # after temperature scaling (T on the other half)
        "final_val_nll_ts": final.get("val_nll_ts", nan),
        "final_val_temperature": final.get("val_temperature", nan),
        "final_val_ci": final.get("val_ci"),  # 95% bootstrap intervals of top-1, NLL, Brier, ECE
        "final_train_loss": history[-1]["train_loss"] if history else nan,
        "wall_time_s": wall_time,
        "img_per_s": sum(rates) / len(rates) if rates else nan,
        "num_classes": data.num_classes,
        "nan_skips": nan_skips,
        "unreadable_images": len(data.unreadable()),
        "label_noise": label_noise,
        "labels_changed": data.labels_changed,
        "val_subset": data.val_subset,  # trainer.limit_val_batches: the val figures are of this subset
    }
    # The EMA weights' numbers (NaN without trainer.ema): every objective is always a key.
    summary.update({"best_ema_val_acc1": best.get("ema_val_acc1", nan),
                    **{f"final_ema_val_{k}": final.get(f"ema_val_{k}", nan) for k in ("acc1", "ece", "nll")}})
    return summary


def option_names(cfg: TrainConfig, chosen: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The option of each group the run was composed from (Hydra's ``runtime.choices``: a user's
    ``dataset=photos``); a group Hydra did not choose (``fit`` called from Python) by its config's name."""
    chosen = chosen or {}
    return {group: str(chosen.get(group) or getattr(cfg, group).name) for group in GROUPS
            if getattr(cfg, group, None) is not None}


# How the done line names the metric that picked the best epoch (parts.selection_key).
SELECTED_BY = {"val_acc1": "highest val top-1", "val_acc5": "highest val top-5", "val_ece": "lowest val ECE",
               "val_nll": "lowest val NLL"}


def done_line(summary: Dict[str, Any], ema: bool, checkpoints: bool, run_dir: Path) -> str:
    """The run's last line: the final epoch's figures, then the best epoch's (what ``best.pt`` holds),
    named by the metric that picked it, every epoch numbered as ``metrics.jsonl`` numbers it."""
    key = summary["best_selected_by"]
    by = ("EMA " if key.startswith("ema_") else "") + SELECTED_BY.get(key.replace("ema_", ""), key)
    final_ema = f", EMA {summary['final_ema_val_acc1']:.2f}" if ema else ""
    best_ema = f", EMA {summary['best_ema_val_acc1']:.2f}" if ema else ""
    held = " (best.pt)" if checkpoints else ""
    return (f"done: final epoch {summary['final_epoch']}: val acc {summary['final_val_acc1']:.2f}{final_ema}, ECE "
            f"{summary['final_val_ece']:.4f}, NLL {summary['final_val_nll']:.4f}; best epoch {summary['best_epoch']}"
            f"{held} by {by}: val acc {summary['best_val_acc1']:.2f}{best_ema}, NLL {summary['best_val_nll']:.4f} | "
            f"{summary['wall_time_s']:.0f}s | {run_dir / layout.SUMMARY}")


def write_summary(path: Path, summary: Dict[str, Any]) -> None:
    """``summary.json``, atomically; where the dir no longer takes a new file (made read-only under
    the run), in place, so that it still tells how the run ended; else nothing more to do."""
    try:
        write_json_atomic(path, summary)
    except OSError:
        try:
            path.write_text(json.dumps(summary, indent=2))
        except OSError:
            pass
