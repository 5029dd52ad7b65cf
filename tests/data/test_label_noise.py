"""dataset.label_noise: exactly the stated fraction of training labels, each moved to another class."""

import math

import pytest
import torch
from helpers import TINY, make_config, make_image_folder

from mixtrain.data import build_data
from mixtrain.data.label_noise import corrupt_labels
from mixtrain.errors import MixtrainError


@pytest.mark.parametrize("rate,n,classes", [(0.2, 5000, 10), (0.5, 1001, 10), (0.8, 333, 3), (0.01, 150, 100),
                                            (0.999, 40, 2)])
def test_exactly_the_stated_fraction_changes_and_never_to_the_same_label(rate, n, classes):
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1))
    noisy, changed = corrupt_labels(labels, rate, classes, seed=7)
    assert changed == math.floor(rate * n + 0.5)
    assert int(noisy.ne(labels).sum()) == changed  # every chosen label really changed
    assert noisy.min() >= 0 and noisy.max() < classes and noisy.dtype == labels.dtype
    assert torch.equal(labels, torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1)))  # input untouched


def test_noise_is_reproducible_from_the_seed_and_uniform_over_other_classes():
    labels = torch.arange(20000) % 4
    a, _ = corrupt_labels(labels, 0.5, 4, seed=3)
    b, _ = corrupt_labels(labels, 0.5, 4, seed=3)
    c, _ = corrupt_labels(labels, 0.5, 4, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Each class's 2,500 changed labels spread evenly over the 3 other classes (833 each, 4 sigma ~ 95).
    changed = a.ne(labels)
    for old in range(4):
        moved = torch.bincount(a[changed & labels.eq(old)], minlength=4)
        assert moved[old] == 0
        assert all(abs(int(moved[new]) - 2500 / 3) < 100 for new in range(4) if new != old), moved
    same, changed = corrupt_labels(labels, 0.0, 4, seed=3)
    assert same is labels and changed == 0


@pytest.mark.parametrize("cache", [True, False])
def test_build_data_corrupts_training_labels_only(tmp_path, cache):
    make_image_folder(tmp_path / "data", per_class=10, val_per_class=4, size=8)
    base = ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", f"dataset.cache={str(cache).lower()}",
            "dataset.image_size=8", *TINY]
    clean = build_data(make_config(*base).dataset, make_config(*base).trainer, torch.device("cpu"), seed=0)
    cfg = make_config(*base, "dataset.label_noise=0.2")
    noisy = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    assert clean.labels_changed == 0 and noisy.labels_changed == 6  # round(0.2 * 30)

    def labels(loader):
        if cache:
            return loader.labels.clone()
        return torch.tensor(loader.dataset.targets)

    assert int(labels(noisy.train).ne(labels(clean.train)).sum()) == 6
    assert torch.equal(labels(noisy.val), labels(clean.val))  # validation stays clean
    if not cache:  # ImageFolder reads samples, not targets, when it loads an image
        assert [t for _, t in noisy.train.dataset.samples] == noisy.train.dataset.targets
        assert noisy.train.dataset.imgs == noisy.train.dataset.samples


def test_label_noise_is_validated():
    with pytest.raises(MixtrainError, match=r"dataset.label_noise must be in \[0, 1\)"):
        make_config("dataset.label_noise=1.0")
