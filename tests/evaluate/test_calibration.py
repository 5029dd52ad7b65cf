"""Calibration metrics, temperature scaling and FGSM on hand-made numbers and a tiny trained model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from mixtrain.evaluate.calibration import TEMPERATURE_BOUNDS, calibration_metrics, fit_temperature, heldout_indices
from mixtrain.evaluate.metrics import (ClassificationMeter, adaptive_calibration_error, brier_sum, calibration_bins,
                                       ece_from_bins, equal_mass_bin_index, mce_from_bins)
from mixtrain.evaluate.robustness import fgsm_accuracy, fgsm_predictions, fgsm_step

# --------------------------------------------------------------------------- ECE, MCE, adaptive ECE, Brier


def test_ece_and_mce_known_values():
    # Bin of 0.9: three samples, one right -> |1/3 - 0.9| = 0.5667. Bin of 0.6: two, both right -> 0.4.
    conf = torch.tensor([0.9, 0.9, 0.9, 0.6, 0.6])
    correct = torch.tensor([1, 0, 0, 1, 1])
    sums = calibration_bins(conf, correct)
    assert ece_from_bins(sums) == pytest.approx((3 * (0.9 - 1 / 3) + 2 * 0.4) / 5, abs=1e-7)  # 0.5
    assert mce_from_bins(sums) == pytest.approx(0.9 - 1 / 3, abs=1e-7)
    # Perfectly calibrated bins: both are zero.
    assert mce_from_bins(calibration_bins(torch.full((10,), 0.7), torch.tensor([1] * 7 + [0] * 3))) == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_mce_matches_torchmetrics_max_norm(seed):
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(1500, 10, generator=g) * (1 + seed)).softmax(1)
    labels = torch.randint(0, 10, (1500,), generator=g)
    reference = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="max")(probs, labels)
    conf, pred = probs.max(1)
    assert mce_from_bins(calibration_bins(conf, pred.eq(labels))) == pytest.approx(float(reference), abs=1e-6)


def test_adaptive_ece_known_value_differs_from_equal_width():
    conf = torch.tensor([0.55, 0.6, 0.65, 0.9], dtype=torch.float64)
    correct = torch.tensor([0, 0, 1, 1])
    # Equal mass, 2 bins: {0.55, 0.6} -> |1.15 - 0| and {0.65, 0.9} -> |1.55 - 2|: (1.15 + 0.45) / 4.
    assert adaptive_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.4, abs=1e-12)
    # Equal width, 2 bins: all four fall in [0.5, 1): |2.7 - 2| / 4.
    assert ece_from_bins(calibration_bins(conf, correct, n_bins=2)) == pytest.approx(0.175, abs=1e-7)


def test_equal_mass_bins_hold_equal_counts_and_keep_ties_together():
    conf = torch.linspace(0.3, 0.99, 31)[torch.randperm(31)]
    counts = torch.bincount(equal_mass_bin_index(conf, 15), minlength=15)
    assert counts.tolist() == [3] + [2] * 14  # 31 = 15 runs of 2, the first one longer
    # Ties across a run boundary share a bin, whatever the sample order.
    tied = torch.tensor([0.2, 0.5, 0.5, 0.5, 0.9, 0.95])
    idx = equal_mass_bin_index(tied, 3)
    assert idx[1] == idx[2] == idx[3]
    correct = torch.tensor([0, 1, 0, 1, 1, 1])
    order = torch.tensor([5, 3, 0, 4, 1, 2])
    assert adaptive_calibration_error(tied, correct, 3) == adaptive_calibration_error(tied[order], correct[order], 3)
    # Fewer samples than bins: one sample per bin, |conf - correct| each.
    assert adaptive_calibration_error(torch.tensor([0.6, 0.8]), torch.tensor([1, 1])) == pytest.approx(0.3)


def test_brier_known_values_and_meter():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    # Label 0: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; label 1: 0.7^2 + 0.8^2 + 0.1^2 = 1.14.
    assert float(brier_sum(probs, torch.tensor([0, 1]))) == pytest.approx(1.28, abs=1e-7)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 5, generator=g) * 2
    labels = torch.randint(0, 5, (200,), generator=g)
    meter = ClassificationMeter()
    for chunk in range(0, 200, 64):
        meter.update(logits[chunk:chunk + 64], labels[chunk:chunk + 64])
    expected = (logits.double().softmax(1) - F.one_hot(labels, 5).double()).square().sum(1).mean()
    assert meter.compute()["brier"] == pytest.approx(float(expected), rel=1e-6)
    assert meter.compute()["mce"] == pytest.approx(
        float(MulticlassCalibrationError(num_classes=5, n_bins=15, norm="max")(logits.softmax(1), labels)), abs=1e-6)


# --------------------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature):
    # Labels drawn from softmax(z): z is calibrated, so logits z * T must be scaled back by T.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    fitted = fit_temperature(z * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.02)
    # The fitted T is the NLL minimum: nudging it either way only raises the NLL.
    nll = lambda t: F.cross_entropy(z.double() * true_temperature / t, labels).item()
    assert nll(fitted) <= min(nll(fitted * 1.01), nll(fitted / 1.01))
    after = calibration_metrics(z * true_temperature / fitted, labels)
    before = calibration_metrics(z * true_temperature, labels)
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"]
    assert after["acc1"] == before["acc1"]  # scaling never changes a prediction


def test_temperature_stops_at_its_bounds_without_signal():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 4, generator=g)
    wrong = (logits.argmax(1) + 1) % 4  # every prediction wrong: the flattest softmax is best
    assert fit_temperature(logits, wrong) == TEMPERATURE_BOUNDS[1]


def test_heldout_split_is_fixed_disjoint_and_complete():
    fit, report = heldout_indices(101, 0.3, seed=4)
    assert len(fit) == 30 and len(report) == 71
    assert sorted(torch.cat([fit, report]).tolist()) == list(range(101))
    again, _ = heldout_indices(101, 0.3, seed=4)
    other, _ = heldout_indices(101, 0.3, seed=5)
    assert torch.equal(fit, again) and not torch.equal(fit, other)


# --------------------------------------------------------------------------- FGSM

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def test_fgsm_step_stays_in_pixel_range_and_is_exact_at_zero():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 3, 6, 6, generator=g)
    pixels[0, 0, 0, 0], pixels[0, 0, 0, 1] = 0.0, 1.0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (pixels - mean) / std
    sign = torch.randint(-1, 2, images.shape, generator=g).float()
    assert torch.equal(fgsm_step(images, sign, 0.0, mean, std), images)
    eps = 8 / 255
    moved = fgsm_step(images, sign, eps, mean, std) * std + mean
    assert moved.min() >= -1e-6 and moved.max() <= 1 + 1e-6
    assert (moved - pixels).abs().max() <= eps + 1e-6
    inside = (pixels > eps) & (pixels < 1 - eps)
    torch.testing.assert_close((moved - pixels)[inside], (eps * sign)[inside], atol=1e-6, rtol=0)


def make_color_task(n: int, g: torch.Generator):
    """8x8 images whose class shows as a faint tint of one channel under noise: learnable, attackable."""
    labels = torch.arange(n) % 3
    pixels = 0.5 + 0.15 * torch.randn(n, 3, 8, 8, generator=g)
    pixels[torch.arange(n), labels] += 0.04
    pixels = pixels.clamp(0, 1)
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1), labels


def test_fgsm_on_a_trained_tiny_model(one_thread):
    g = torch.Generator().manual_seed(0)
    train_x, train_y = make_color_task(600, g)
    val_x, val_y = make_color_task(300, g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3), nn.Dropout(0.5))  # dropout: eval mode must switch it off
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        loss = F.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        clean = 100.0 * model(val_x).argmax(1).eq(val_y).double().mean().item()
    assert clean > 75  # it learned something worth attacking

    batches = [(val_x[i:i + 128], val_y[i:i + 128]) for i in range(0, 300, 128)]
    levels = [0, 1, 2, 4, 8]
    eps = [e / 255 for e in levels]
    accuracy = [row["acc1"] for row in fgsm_accuracy(*fgsm_predictions(model, batches, eps, MEAN, STD), eps)]
    assert accuracy[0] == pytest.approx(clean, abs=1e-9)
    assert all(later <= earlier for earlier, later in zip(accuracy, accuracy[1:])), accuracy
    assert accuracy[-1] < clean - 30  # 8/255 hurts a model that relies on faint tints
    assert all(p.requires_grad for p in model.parameters())  # weights handed back as they were
