"""The sweep plot of ``mixtrain report``: top-1 and ECE against the swept value. matplotlib, headless."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mixtrain.evaluate.reliability import pyplot
from mixtrain.files import write_atomic
from mixtrain.runs.groups import MISSING_VALUE, Group, format_value


def plot_axis(groups: Sequence[Group], keys: Sequence[str]) -> Optional[str]:
    """The key on the x axis: a mixing alpha if one differs, else the first numeric key."""
    def numeric(key: str) -> bool:
        values = [g.values[keys.index(key)] for g in groups if g.values[keys.index(key)] != MISSING_VALUE]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    candidates = [k for k in keys if numeric(k)]
    alphas = [k for k in candidates if k.rsplit(".", 1)[-1].endswith("alpha")]
    return (alphas or candidates or [None])[0]


def write_plot(path: Path, groups: Sequence[Group], keys: Sequence[str]) -> Optional[Path]:
    """Top-1, ECE and ECE after temperature scaling against the swept value (a mixing alpha if one was swept), one line per
    value of the other differing keys, error bars = std across seeds."""
    groups = [g for g in groups if g.completed]
    if not groups:
        return None
    plt = pyplot()
    x_key = plot_axis(groups, keys)
    other = [k for k in keys if k != x_key]
    lines: Dict[str, List[Group]] = {}
    for group in groups:
        label = ", ".join(f"{k}={format_value(group.values[keys.index(k)])}" for k in other) or "all runs"
        lines.setdefault(label, []).append(group)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    panels = [(axes[0], ("final_val_acc1", "best_val_acc1"), "top-1 accuracy (%)"),
              (axes[1], ("final_val_ece",), "ECE (15 bins)"),
              (axes[2], ("final_val_ece_ts",), "ECE after temperature scaling")]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    categories = [", ".join(format_value(v) for v in g.values) or "all" for g in groups]
    for i, (label, members) in enumerate(lines.items()):
        color = colors[i % len(colors)]
        for ax, metrics, _ in panels:
            for metric in metrics:
                best = metric == "best_val_acc1"
                name = f"{label} ({'best.pt' if best else 'final'})" if len(metrics) > 1 else label
                style = dict(color=color, linestyle="--" if best else "-", marker="s" if best else "o",
                             alpha=0.6 if best else 1.0, capsize=3, label=name)
                if x_key is None:
                    xs = [categories.index(", ".join(format_value(v) for v in g.values) or "all") for g in members]
                    points = [(x, *g.stats(metric)) for x, g in zip(xs, members)]
                else:
                    at = keys.index(x_key)
                    # A group without the x key (augment=none beside a mixup alpha sweep) is a baseline band.
                    for g in members:
                        if g.values[at] == MISSING_VALUE:
                            mean, std = g.stats(metric)
                            ax.axhline(mean, color=color, linestyle=style["linestyle"], alpha=style["alpha"], label=name)
                            if not math.isnan(std):
                                ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
                    points = sorted((g.values[at], *g.stats(metric)) for g in members if g.values[at] != MISSING_VALUE)
                if points:
                    xs, means, stds = zip(*points)
                    ax.errorbar(xs, means, yerr=[0.0 if math.isnan(s) else s for s in stds], **style)
    for ax, _, ylabel in panels:
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if x_key is None:
            ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
            ax.set_xlabel(", ".join(keys) or "runs")
        else:
            ax.set_xlabel(x_key)
            ticks = sorted({g.values[keys.index(x_key)] for g in groups} - {MISSING_VALUE})
            if len(ticks) <= 12:
                ax.set_xticks(ticks, [format_value(t) for t in ticks])
    axes[0].legend(fontsize=8)
    seeds = sorted({g.seeds for g in groups})
    fig.suptitle(f"mean over {'/'.join(map(str, seeds))} seed(s) per point; error bars: ±1 std across seeds",
                 fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
    plt.close(fig)
    return path
