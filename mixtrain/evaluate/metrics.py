"""Classification metrics accumulated over batches as sums, so they merge exactly.

Every metric is a ratio of sums (counts, per-bin sums), kept in float64. Merging two
accumulators, or all-reducing across processes, adds the sums; nothing is averaged
twice. ECE follows torchmetrics' ``MulticlassCalibrationError(n_bins, norm="l1")``:
equal-width bins over the top-label confidence, each bin ``[lo, hi)``, and a
confidence of exactly 1.0 in a bin of its own; MCE is the same bins with
``norm="max"``. Adaptive ECE (equal-mass bins) needs every confidence at once, so it
takes whole tensors rather than sums.
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


def mce_from_bins(sums: torch.Tensor) -> float:
    """Maximum calibration error: the largest ``|acc_b - conf_b|`` over the non-empty bins."""
    count, conf, correct = sums
    if count.sum() == 0:
        return float("nan")
    used = count > 0
    return float(((conf[used] - correct[used]).abs() / count[used]).max())


def equal_mass_bin_index(confidences: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """Bin of each confidence for bins that hold (nearly) equal numbers of samples.

    The sorted confidences are cut into ``n_bins`` runs whose sizes differ by at most
    one, and each boundary sits halfway between the last value of a run and the first
    of the next (Kumar et al. 2019, "Verified Uncertainty Calibration", equal-mass
    binning in their ``uncertainty-calibration`` code). A confidence equal to a
    boundary goes to the lower bin, so equal confidences always share a bin and the
    result does not depend on the order of the samples; ties can merge bins.
    """
    n = confidences.numel()
    parts = max(1, min(n_bins, n))
    ordered = confidences.double().sort().values
    sizes = torch.full((parts,), n // parts, dtype=torch.long)
    sizes[: n % parts] += 1
    ends = sizes.cumsum(0)[:-1]  # first index of runs 2..parts
    boundaries = (ordered[ends - 1] + ordered[ends]) / 2
    return torch.bucketize(confidences.double(), boundaries, right=False)


def adaptive_calibration_error(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """L1 calibration error over equal-mass bins of the top-label confidence.

    Equal-width ECE leaves most bins nearly empty when a model is confident (a
    CIFAR ResNet puts most samples above 0.9); equal-mass bins spend the resolution
    where the samples are (Nguyen and O'Connor 2015; Nixon et al. 2019).
    """
    if confidences.numel() == 0:
        return float("nan")
    idx = equal_mass_bin_index(confidences, n_bins)
    gaps = torch.zeros(n_bins, dtype=torch.float64, device=confidences.device)
    gaps.index_add_(0, idx, confidences.double() - correct.double())
    return float(gaps.abs().sum() / confidences.numel())


def debiased_calibration_error(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Kumar et al. 2019's debiased estimate of the L2 top-label calibration error.

    Over equal-mass bins (as :func:`adaptive_calibration_error`): ``sqrt(max(0, sum_b (n_b / N)
    ((conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1))))``; subtracting each bin's sampling
    variance removes the plug-in estimate's upward bias, which dominates on small validation
    sets. Bins with fewer than two samples count zero (their ``uncertainty-calibration`` code).
    """
    n = confidences.numel()
    if n == 0:
        return float("nan")
    idx = equal_mass_bin_index(confidences, n_bins)
    sums = torch.zeros(3, n_bins, dtype=torch.float64)
    for row, values in enumerate((torch.ones(n, dtype=torch.float64), confidences.double(), correct.double())):
        sums[row].index_add_(0, idx.cpu(), values.cpu())
    count, conf, acc = sums[0], sums[1] / sums[0].clamp(min=1), sums[2] / sums[0].clamp(min=1)
    used = count >= 2
    errors = (conf - acc).square() - acc * (1 - acc) / (count - 1).clamp(min=1)
    square = float((count[used] / n * errors[used]).sum())
    return max(square, 0.0) ** 0.5


def classwise_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Mean over classes of the ECE of each class's probability (Kull et al. 2019's classwise ECE).

    For class k, every sample's ``p_k`` goes into the equal-width bins of :func:`bin_index`,
    and the bin's accuracy is the fraction of its samples labelled k.
    """
    n, classes = probs.shape
    if n == 0:
        return float("nan")
    probs = probs.double()
    idx = (bin_index(probs, n_bins) + (n_bins + 1) * torch.arange(classes, device=probs.device)).flatten()
    hits = torch.nn.functional.one_hot(labels, classes).double().flatten()
    gaps = torch.zeros(classes * (n_bins + 1), dtype=torch.float64, device=probs.device)
    gaps.index_add_(0, idx, probs.flatten() - hits)
    return float(gaps.view(classes, -1).abs().sum(1).mean() / n)


def brier_sum(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Float64 sum over samples of ``sum_c (p_c - y_c)^2`` (multiclass Brier 1950; 0 best, 2 worst)."""
    probs = probs.double()
    true_prob = probs.gather(1, labels[:, None]).squeeze(1)
    # sum_c p_c^2 - 2 p_y + 1: no one-hot matrix, so it scales to many classes.
    return (probs.square().sum(1) - 2 * true_prob + 1).sum()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE of ``[N, C]`` probabilities against integer labels."""
    confidences, predictions = probs.max(dim=1)
    return ece_from_bins(calibration_bins(confidences, predictions.eq(labels), n_bins))


class ClassificationMeter:
    """Accumulates top-1, top-5, NLL, Brier, ECE and MCE over batches of logits and integer labels."""

    def __init__(self, n_bins: int = ECE_BINS, device: torch.device | str = "cpu", keep: bool = False) -> None:
        if n_bins < 4:
            raise ValueError(f"n_bins must be >= 4 (row 0 of the sums holds five numbers), got {n_bins}")
        self.n_bins = n_bins
        # keep=True also keeps every logit and label seen (on the CPU): for temperature fits and bootstraps.
        self.kept = [] if keep else None
        # Row 0: [samples, top-1 correct, top-5 correct, NLL sum, Brier sum, 0...]; rows 1-3: ECE bin sums.
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
                            predictions.eq(labels).sum().double(), top5.sum().double(), nll.double(),
                            brier_sum(probs, labels)])
        self.sums[0, :5] += head.to(self.sums.device)
        self.sums[1:] += calibration_bins(confidences, predictions.eq(labels), self.n_bins).to(self.sums.device)
        if self.kept is not None:
            self.kept.append((logits.cpu(), labels.cpu()))

    @property
    def ece_bins(self) -> torch.Tensor:
        """``[3, n_bins + 1]`` per-bin sums (count, confidence, correct) for reliability diagrams."""
        return self.sums[1:]

    def compute(self) -> Dict[str, float]:
        n, correct1, correct5, nll, brier = self.sums[0, :5].tolist()
        if n == 0:
            return {key: float("nan") for key in ("acc1", "acc5", "nll", "brier", "ece", "mce")}
        return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "nll": nll / n, "brier": brier / n,
                "ece": ece_from_bins(self.sums[1:]), "mce": mce_from_bins(self.sums[1:])}
