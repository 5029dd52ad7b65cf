"""Temperature scaling (Guo et al. 2017) and the calibration numbers of a set of logits.

One scalar T divides every logit; it is fitted by minimizing the NLL on held-out data
and changes no prediction (the argmax of ``z / T`` is the argmax of ``z``), only the
confidence. Mixup already softens confidences, and temperature scaling on top of it can
help less or even hurt (Wang et al. 2023, "On the pitfall of mixup for uncertainty
calibration"), which is why ``mixtrain eval`` reports both sides.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from mixtrain.errors import MixtrainError
from mixtrain.evaluate.metrics import (ClassificationMeter, adaptive_calibration_error, calibration_bins,
                                       classwise_calibration_error, debiased_calibration_error)

# T outside this range means the held-out data carries no usable signal (or the model
# is worse than chance there); the fit stops at the bound and says so.
TEMPERATURE_BOUNDS = (0.01, 100.0)


def _nll_and_derivatives(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> Tuple[float, float, float]:
    """Mean NLL of ``softmax(beta * z)`` and its first two derivatives in ``beta``."""
    scaled = logits * beta
    log_probs = scaled.log_softmax(dim=1)
    probs = log_probs.exp()
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    nll = -log_probs.gather(1, labels[:, None]).mean()
    mean_logit = (probs * logits).sum(1)  # E_p[z]
    grad = (mean_logit - true_logit).mean()  # d/dbeta of logsumexp(beta z) - beta z_y
    curvature = ((probs * logits.square()).sum(1) - mean_logit.square()).mean()  # Var_p[z] >= 0
    return float(nll), float(grad), float(curvature)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, tol: float = 1e-10, max_iter: int = 100) -> float:
    """The temperature ``T`` that minimizes the mean NLL of ``softmax(logits / T)``.

    Solved in ``beta = 1 / T``, where the NLL is convex (a log-sum-exp of functions
    linear in beta, minus a linear term), by Newton steps safeguarded with bisection on
    the sign of the derivative, in float64. Guo et al. fit T with L-BFGS; convexity in
    1/T makes the answer unique, so any correct solver lands on the same T.
    """
    if len(labels) == 0:
        raise MixtrainError("no held-out samples to fit the temperature on: use a larger heldout fraction")
    logits, labels = logits.double(), labels.long()
    lo, hi = 1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0]
    if _nll_and_derivatives(logits, labels, lo)[1] >= 0:  # NLL rising already at the smallest beta
        return TEMPERATURE_BOUNDS[1]
    if _nll_and_derivatives(logits, labels, hi)[1] <= 0:  # still falling at the largest beta
        return TEMPERATURE_BOUNDS[0]
    beta = 1.0
    for _ in range(max_iter):
        _, grad, curvature = _nll_and_derivatives(logits, labels, beta)
        if abs(grad) <= tol:
            break
        if grad > 0:
            hi = beta
        else:
            lo = beta
        step = beta - grad / curvature if curvature > 0 else math.nan
        # Newton when it stays inside the bracket, otherwise bisect (geometrically: beta spans 4 decades).
        beta = step if lo < step < hi else math.sqrt(lo * hi)
        if hi - lo <= 1e-12 * beta:
            break
    return 1.0 / beta


def heldout_indices(n: int, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(fit, report)``: a fixed random split of ``range(n)``, ``round(fraction * n)`` samples to fit on."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    k = math.floor(fraction * n + 0.5)
    if k < 1 or k > n - 1:
        raise MixtrainError(f"heldout={fraction} of {n} validation samples leaves {k} to fit the temperature and "
                            f"{n - k} to report on: both need at least one; choose a fraction nearer 0.5")
    return order[:k].sort().values, order[k:].sort().values


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Top-1/top-5 (%), NLL, Brier, ECE and MCE (the training meter's numbers), adaptive (equal-mass)
    ECE, classwise ECE and Kumar et al.'s debiased (L2) calibration error."""
    meter = ClassificationMeter()
    for part_logits, part_labels in zip(logits.split(8192), labels.split(8192)):  # bounded float64 copies
        meter.update(part_logits, part_labels)
    metrics = meter.compute()
    probs = logits.float().softmax(dim=1)
    confidences, predictions = probs.max(dim=1)
    metrics["adaptive_ece"] = adaptive_calibration_error(confidences, predictions.eq(labels))
    metrics["classwise_ece"] = classwise_calibration_error(probs, labels)
    metrics["debiased_ece"] = debiased_calibration_error(confidences, predictions.eq(labels))
    return metrics


def calibratability(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> Dict[str, float]:
    """How well temperature scaling can calibrate these predictions (Wang et al. 2023): T fitted on
    a fixed half of the samples, ECE and NLL after scaling on the other half."""
    if len(labels) < 2:
        return {"temperature": float("nan"), "ece_ts": float("nan"), "nll_ts": float("nan")}
    fit, report = heldout_indices(len(labels), 0.5, seed)
    temperature = fit_temperature(logits[fit], labels[fit])
    scaled = logits[report].double() / temperature
    meter = ClassificationMeter()
    meter.update(scaled, labels[report])
    after = meter.compute()
    return {"temperature": temperature, "ece_ts": after["ece"], "nll_ts": after["nll"]}


def reliability_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ECE bin sums of ``logits`` (what :func:`mixtrain.runs.plots.reliability_figure` draws)."""
    confidences, predictions = logits.float().softmax(dim=1).max(dim=1)
    return calibration_bins(confidences, predictions.eq(labels))
