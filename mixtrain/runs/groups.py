"""Runs grouped by the config values that differ between them (the seed aside): each group's
statistics over its completed runs and its pooled 95% intervals. ``mixtrain report``'s tables and
plot read these."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from mixtrain import layout
from mixtrain.artifacts.logits import load_logits
from mixtrain.config.registry import GROUPS
from mixtrain.evaluate.bootstrap import bootstrap_intervals
from mixtrain.runs.dirs import COMPLETED, STATUSES, Run

# Keys that do not define an experiment: seeds are its replicates; resume, the sweep objective
# and the loggers (every logger.* key) do not change what is trained.
NOT_GROUPED = ("seed", "resume", "objective", "logger")
MISSING_VALUE = "-"
UNREADABLE_LOGITS = f"{layout.LOGITS} is unreadable: left out of the pooled intervals"


@dataclass
class Group:
    values: Tuple[Any, ...]  # one per differing key
    runs: List[Run]

    @property
    def completed(self) -> List[Run]:
        return [r for r in self.runs if r.status == COMPLETED]

    def stats(self, metric: str) -> Tuple[float, float]:
        """Mean and sample std (n - 1) over completed runs with a finite value; std is NaN for one run."""
        values = [r.metrics.get(metric, math.nan) for r in self.completed]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan

    @property
    def seeds(self) -> int:
        """How many distinct seeds completed."""
        return len({_comparable(r.seed) for r in self.completed})

    def status_counts(self) -> Dict[str, int]:
        return status_counts(self.runs)

    def pooled_intervals(self) -> Dict[str, List[float]]:
        """95% bootstrap intervals over the pooled final validation predictions of the completed
        runs that saved them (``val_logits.pt``): images from every seed, resampled together. A file
        that cannot be read is left out, and noted on its run."""
        saved = []
        for run in self.completed:
            predictions = load_logits(run.path / layout.LOGITS)
            if predictions is not None:
                saved.append(predictions)
            elif os.path.lexists(run.path / layout.LOGITS) and UNREADABLE_LOGITS not in run.notes:
                run.notes.append(UNREADABLE_LOGITS)
        if not saved:
            return {}
        return bootstrap_intervals(torch.cat([p.logits for p in saved]), torch.cat([p.labels for p in saved]))


def status_counts(runs: Sequence[Run]) -> Dict[str, int]:
    """Runs per status, in STATUSES order, statuses with no run left out."""
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    return {s: n for s, n in counts.items() if n}


# --------------------------------------------------------------------------- grouping


def _comparable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def differing_keys(runs: Sequence[Run]) -> List[str]:
    """Config keys whose values differ between runs (seed, resume and objective aside).

    A key that only some runs have because their group option differs (``augment.alpha``
    exists for mixup, not for none) is implied by ``<group>.name`` and left out, unless
    its value differs among the runs that have it.
    """
    known = [r for r in runs if r.params]
    keys = sorted({k for r in known for k in r.params})
    out = []
    for key in keys:
        if key in NOT_GROUPED or key.split(".", 1)[0] in NOT_GROUPED:
            continue
        present = [_comparable(r.params[key]) for r in known if key in r.params]
        if len(set(present)) > 1:
            out.append(key)
        elif len(present) < len(known):
            group = key.split(".", 1)[0]
            if group not in GROUPS or len({_comparable(r.params.get(f"{group}.name")) for r in known}) == 1:
                out.append(key)
    return out


def _sort_value(value: Any) -> Tuple:
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, str(value))


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> List[Group]:
    groups: Dict[str, Group] = {}
    for run in runs:
        values = tuple(run.params.get(k, MISSING_VALUE) for k in keys)
        groups.setdefault(_comparable(values), Group(values, [])).runs.append(run)
    return sorted(groups.values(), key=lambda g: tuple(_sort_value(v) for v in g.values))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
