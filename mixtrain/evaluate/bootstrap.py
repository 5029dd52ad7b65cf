"""Error bars by resampling the evaluated images: percentile bootstrap, vectorized.

Each metric reported with an interval (top-1, NLL, Brier, ECE) is a sum over images of a
per-image quantity divided by the number of images; ECE is ``sum_b |sum_{i in b} (conf_i -
correct_i)| / N``, a sum of per-image gaps per confidence bin. A bootstrap resample is a
vector of counts (how often each image was drawn), so every resample's metrics come from
one matrix product ``counts [R, N] @ per_image [N, K]``: 1,000 resamples of 10,000 images
take well under a second on the CPU.

A *paired* bootstrap applies the same resamples to two models' predictions on the same
images; the interval of the difference says whether it holds beyond the noise of which
images happened to be in the validation set.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F

from mixtrain.evaluate.metrics import ECE_BINS, bin_index

METRICS = ("acc1", "nll", "brier", "ece")
LEVEL = 0.95


def per_image(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """``[N, 3 + n_bins + 1]`` float64: correct (%), NLL, Brier, then the confidence gap in its ECE bin."""
    logits = logits.double()
    probs = logits.softmax(1)
    confidences, predictions = probs.max(1)
    correct = predictions.eq(labels).double()
    nll = F.cross_entropy(logits, labels, reduction="none")
    true_prob = probs.gather(1, labels[:, None]).squeeze(1)
    brier = probs.square().sum(1) - 2 * true_prob + 1
    gaps = F.one_hot(bin_index(confidences, n_bins), n_bins + 1).double() * (confidences - correct)[:, None]
    return torch.cat([torch.stack([100.0 * correct, nll, brier], 1), gaps], 1)


def metrics_of(sums: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., 4]`` (top-1, NLL, Brier, ECE) from ``[..., K]`` sums of :func:`per_image` over ``n`` images."""
    return torch.cat([sums[..., :3] / n, sums[..., 3:].abs().sum(-1, keepdim=True) / n], -1)


def resample_counts(n: int, resamples: int, seed: int, chunk: int = 250) -> Iterator[torch.Tensor]:
    """``[chunk, n]`` float64 counts of each image in each resample, from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = torch.randint(n, (rows, n), generator=g)
        yield torch.zeros(rows, n, dtype=torch.float64).scatter_add_(1, drawn, torch.ones(rows, n, dtype=torch.float64))


def _interval(samples: torch.Tensor) -> List[List[float]]:
    q = torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=samples.dtype)
    return torch.quantile(samples, q, dim=0).T.tolist()


def bootstrap_intervals(logits: torch.Tensor, labels: torch.Tensor, resamples: int = 1000,
                        seed: int = 0) -> Dict[str, List[float]]:
    """95% percentile interval ``[low, high]`` of top-1 (%), NLL, Brier and ECE."""
    values = per_image(logits, labels)
    draws = torch.cat([metrics_of(w @ values, len(labels)) for w in resample_counts(len(labels), resamples, seed)])
    return dict(zip(METRICS, _interval(draws)))


def paired_differences(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor, resamples: int = 1000,
                       seed: int = 0) -> Dict[str, Tuple[float, float, float]]:
    """``metric -> (a - b, low, high)``: the difference and its 95% interval under the same resamples."""
    a, b = per_image(logits_a, labels), per_image(logits_b, labels)
    n = len(labels)
    diffs = torch.cat([metrics_of(w @ a, n) - metrics_of(w @ b, n) for w in resample_counts(n, resamples, seed)])
    observed = (metrics_of(a.sum(0), n) - metrics_of(b.sum(0), n)).tolist()
    return {m: (d, lo, hi) for m, d, (lo, hi) in zip(METRICS, observed, _interval(diffs))}


def paired_accuracy(predictions_a: torch.Tensor, predictions_b: torch.Tensor, labels: torch.Tensor,
                    resamples: int = 1000, seed: int = 0) -> Tuple[float, float, float]:
    """``(a - b, low, high)`` of top-1 (%) from two models' predicted classes on the same images (FGSM's)."""
    correct = 100.0 * (predictions_a.eq(labels).double() - predictions_b.eq(labels).double())
    n = len(labels)
    diffs = torch.cat([w @ correct / n for w in resample_counts(n, resamples, seed)])
    low, high = _interval(diffs[:, None])[0]
    return correct.mean().item(), low, high
