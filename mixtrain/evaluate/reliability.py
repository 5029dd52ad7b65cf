"""Reliability diagrams (Guo et al. 2017, Fig. 1): accuracy against confidence per bin, from the
same bin sums the ECE is computed from. matplotlib, headless."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch

from mixtrain.evaluate.metrics import ece_from_bins
from mixtrain.files import write_atomic


def pyplot():
    import matplotlib  # 0.35 s to import: only when a figure is drawn

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt  # after choosing the backend

    return plt


def reliability_figure(sums: torch.Tensor, title: str = "", axes=None):
    """Accuracy against confidence per bin, with the gap to the diagonal, over a histogram of how
    many samples each bin holds, from ECE bin sums.

    ``sums``: ``[3, n_bins + 1]`` (count, confidence sum, correct sum), as
    :func:`mixtrain.evaluate.metrics.calibration_bins` returns; the extra last bin (confidence
    exactly 1.0) is drawn with the top bin. The ECE in the title is computed from the
    same sums, so it is the number the run reports. The counts keep the picture honest: a tall
    gap over a bin of three samples weighs three samples in the ECE. ``axes``: (diagram,
    histogram) to draw into; None makes a figure.
    """
    plt = pyplot()
    sums = sums.double().cpu()
    ece = ece_from_bins(sums)
    merged = sums[:, :-1].clone()
    merged[:, -1] += sums[:, -1]
    count, conf, correct = merged.numpy()
    n_bins = len(count)
    edges = np.linspace(0, 1, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, correct / count, 0.0)
        confidence = np.where(count > 0, conf / count, centers)
    fig = None
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(4.2, 5.4), dpi=110, sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    ax, hist = axes
    width = 1.0 / n_bins
    ax.bar(centers, accuracy, width=width, edgecolor="black", color="#4878d0", label="accuracy")
    gap_low, gap_high = np.minimum(accuracy, confidence), np.maximum(accuracy, confidence)
    shown = count > 0
    ax.bar(centers[shown], (gap_high - gap_low)[shown], bottom=gap_low[shown], width=width, color="#d65f5f",
           alpha=0.45, edgecolor="#d65f5f", hatch="//", label="gap")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title + ' - ' if title else ''}ECE {ece:.4f}")
    ax.legend(loc="upper left")
    hist.bar(centers, count, width=width, edgecolor="black", color="#8c8c8c")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence")
    hist.set_ylabel(f"samples (of {int(count.sum())})")
    return fig if fig is not None else ax.figure


def save_reliability_diagram(sums: torch.Tensor, path: Path, title: str = "") -> Path:
    plt = pyplot()
    fig = reliability_figure(sums, title)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
    plt.close(fig)
    return Path(path)


def save_reliability_panels(panels: Sequence[Tuple[torch.Tensor, str]], path: Path) -> Path:
    """Reliability diagrams side by side (e.g. before and after temperature scaling) in one PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 5.4), dpi=110, squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for k, (sums, title) in enumerate(panels):
        reliability_figure(sums, title, axes=(axes[0][k], axes[1][k]))
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
    plt.close(fig)
    return Path(path)


def figure_to_array(fig) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels of a matplotlib figure (for TensorBoard)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def reliability_image(sums: torch.Tensor, title: str = "") -> np.ndarray:
    plt = pyplot()
    fig = reliability_figure(sums, title)
    fig.tight_layout()
    image = figure_to_array(fig)
    plt.close(fig)
    return image
