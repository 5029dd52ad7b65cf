import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from mixtrain.evaluate.metrics import ClassificationMeter, calibration_bins, ece_from_bins, expected_calibration_error


def torchmetrics_ece(probs, labels):
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=15, norm="l1")
    return float(metric(probs, labels))


@pytest.mark.parametrize("seed", range(5))
def test_ece_matches_torchmetrics_on_random_probabilities(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2000, 10, generator=g) * (1 + seed)
    labels = torch.randint(0, 10, (2000,), generator=g)
    probs = logits.softmax(1)
    assert expected_calibration_error(probs, labels) == pytest.approx(torchmetrics_ece(probs, labels), abs=1e-6)


def test_ece_matches_torchmetrics_on_bin_edges_and_certainty():
    # Confidences exactly on bin boundaries (k/15) and exactly 1.0 are where binning rules differ.
    conf = torch.tensor([k / 15 for k in range(1, 16)] * 4 + [1.0] * 7, dtype=torch.float32)
    n = len(conf)
    probs = torch.zeros(n, 2)
    probs[:, 0] = conf
    probs[:, 1] = 1 - conf
    # Where conf < 0.5 the argmax is class 1: confidence 1 - conf, still on a boundary.
    labels = torch.tensor([i % 2 for i in range(n)])
    assert expected_calibration_error(probs, labels) == pytest.approx(torchmetrics_ece(probs, labels), abs=1e-6)


def test_ece_known_value():
    # Two bins used: 0.95 conf, 50% right -> gap 0.45; 0.55 conf, all right -> gap 0.45. ECE 0.45.
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.45, abs=1e-7)


def test_perfectly_calibrated_bins_give_zero():
    conf = torch.full((10,), 0.7)
    correct = torch.tensor([1] * 7 + [0] * 3)
    assert ece_from_bins(calibration_bins(conf, correct)) == pytest.approx(0.0, abs=1e-7)


def test_meter_merges_batches_exactly():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(301, 7, generator=g) * 3
    labels = torch.randint(0, 7, (301,), generator=g)
    whole = ClassificationMeter()
    whole.update(logits, labels)
    parts = ClassificationMeter()
    for chunk in range(0, 301, 64):
        parts.update(logits[chunk:chunk + 64], labels[chunk:chunk + 64])
    a, b = whole.compute(), parts.compute()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-9)
    assert a["acc1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    top5 = logits.topk(5, 1).indices.eq(labels[:, None]).any(1).float().mean().item()
    assert a["acc5"] == pytest.approx(100 * top5)
    assert a["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert a["ece"] == pytest.approx(torchmetrics_ece(logits.softmax(1), labels), abs=1e-6)


def test_empty_meter_is_nan():
    assert all(math.isnan(v) for v in ClassificationMeter().compute().values())
