"""Classification metrics accumulated over batches as sums, so they merge exactly.

Every metric is a ratio of sums (counts, per-bin sums), kept in float64. Merging two
accumulators, or all-reducing across processes, adds the sums; nothing is averaged
twice. ECE follows torchmetrics' ``MulticlassCalibrationError(n_bins, norm="l1")``:
equal-width bins over the top-label confidence, each bin ``[lo, hi)``, and a
confidence of exactly 1.0 in a bin of its own.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

ECE_BINS = 15


def bin_index(confidences: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence: ``k`` for ``k/n <= c < (k+1)/n``, and ``n`` for ``c == 1``."""
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidences.dtype, device=confidences.device)
    return torch.bucketize(confidences, boundaries, right=True) - 1


def calibration_bins(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """``[3, n_bins + 1]`` float64 sums per bin: count, confidence, correct."""
    idx = bin_index(confidences, n_bins)
    sums = torch.zeros(3, n_bins + 1, dtype=torch.float64, device=confidences.device)
    sums[0].index_add_(0, idx, torch.ones_like(confidences, dtype=torch.float64))
    sums[1].index_add_(0, idx, confidences.double())
    sums[2].index_add_(0, idx, correct.double())
    return sums


def ece_from_bins(sums: torch.Tensor) -> float:
    """L1 expected calibration error: ``sum_b (n_b / N) * |acc_b - conf_b|``."""
    count, conf, correct = sums
    total = count.sum()
    if total == 0:
        return float("nan")
    return float((conf - correct).abs().sum() / total)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE of ``[N, C]`` probabilities against integer labels."""
    confidences, predictions = probs.max(dim=1)
    return ece_from_bins(calibration_bins(confidences, predictions.eq(labels), n_bins))


class ClassificationMeter:
    """Accumulates top-1, top-5, NLL and ECE over batches of logits and integer labels."""

    def __init__(self, n_bins: int = ECE_BINS, device: torch.device | str = "cpu") -> None:
        self.n_bins = n_bins
        # Row 0: [samples, top-1 correct, top-5 correct, NLL sum, 0...]; rows 1-3: ECE bin sums.
        self.sums = torch.zeros(4, n_bins + 1, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch; rows labelled -1 (stand-ins for unreadable files) are left out."""
        keep = labels >= 0
        if not bool(keep.all()):
            logits, labels = logits[keep], labels[keep]
        logits = logits.float()
        probs = logits.softmax(dim=1)
        confidences, predictions = probs.max(dim=1)
        k = min(5, logits.shape[1])
        top5 = logits.topk(k, dim=1).indices.eq(labels[:, None]).any(dim=1)
        nll = F.cross_entropy(logits.double(), labels, reduction="sum")  # float64: sums merge exactly
        head = torch.stack([torch.tensor(float(len(labels)), device=logits.device),
                            predictions.eq(labels).sum().double(), top5.sum().double(), nll.double()])
        self.sums[0, :4] += head.to(self.sums.device)
        self.sums[1:] += calibration_bins(confidences, predictions.eq(labels), self.n_bins).to(self.sums.device)

    @property
    def ece_bins(self) -> torch.Tensor:
        """``[3, n_bins + 1]`` per-bin sums (count, confidence, correct) for reliability diagrams."""
        return self.sums[1:]

    def compute(self) -> Dict[str, float]:
        n, correct1, correct5, nll = self.sums[0, :4].tolist()
        if n == 0:
            return {"acc1": float("nan"), "acc5": float("nan"), "nll": float("nan"), "ece": float("nan")}
        return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "nll": nll / n,
                "ece": ece_from_bins(self.sums[1:])}
