"""k-mixup: k samples and their labels blended with Dirichlet(alpha, ..., alpha) weights
(mixtrain/mixing/kmixup.py).

Pixel provenance, as in test_mixing_family.py: channel k of sample k is 1 and every other channel 0,
so a mixed image's channel means are the share of each source in it; the target row must equal them."""

import numpy as np
import pytest
import torch
from helpers import TINY

from mixtrain.cli import main
from mixtrain.errors import MixtrainError
from mixtrain.mixing import create_mixer, describe_augment
from mixtrain.mixing.kmixup import KMixupConfig
from mixtrain.mixing.preview import caption

pytestmark = pytest.mark.usefixtures("one_thread")


def indexed(batch: int, size: int = 6) -> torch.Tensor:
    return torch.eye(batch)[:, :, None, None].expand(batch, batch, size, size).contiguous()


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("batch", [1, 7, 8])
@pytest.mark.parametrize("k", [2, 4])
def test_each_target_row_is_the_share_of_each_source_in_the_blend(mode, batch, k):
    mixer = create_mixer(KMixupConfig(k=k, mode=mode), num_classes=batch, epochs=1, seed=batch)
    for _ in range(4):
        images = indexed(batch)
        mixed, targets = mixer(images, torch.arange(batch), epoch=0)
        torch.testing.assert_close(targets, mixed.mean(dim=(2, 3)), atol=1e-6, rtol=0)
        torch.testing.assert_close(mixed, mixed[:, :, :1, :1].expand_as(mixed))  # a blend: the same at every pixel
        assert torch.allclose(targets.sum(1), torch.ones(batch))
        if batch > 1:
            assert (targets.max(1).values < 1).any()


def test_each_pixel_is_the_weighted_sum_of_the_sample_and_its_partners():
    images = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    cfg = KMixupConfig(k=3, mode="elem", alpha=0.5)
    plan = create_mixer(cfg, 6, epochs=1, seed=1).draw_plan(6, 5, 5)
    mixed, _ = create_mixer(cfg, 6, epochs=1, seed=1)(images.clone(), torch.arange(6), epoch=0)
    weights, partner = plan.weights, plan.partner
    for i in range(6):
        expected = weights[0, i] * images[i] + sum(weights[j + 1, i] * images[partner[j, i]] for j in range(2))
        torch.testing.assert_close(mixed[i], expected)


@pytest.mark.parametrize("alpha", [0.4, 1.0, 3.0])
def test_the_weights_are_dirichlet_and_with_two_samples_mixups_beta(alpha):
    mixer = create_mixer(KMixupConfig(k=2, alpha=alpha, mode="elem"), 2, epochs=1, seed=0)
    own = mixer.draw_weights(40_000, 1, 1)[0][0]
    # Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1))
    assert own.mean() == pytest.approx(0.5, abs=0.01)
    assert own.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
    weights = create_mixer(KMixupConfig(k=4, alpha=alpha), 4, epochs=1).draw_weights(40_000, 1, 1)[0]
    np.testing.assert_allclose(weights.sum(0), 1.0)
    np.testing.assert_allclose(weights.mean(1), 0.25, atol=0.01)  # every slot alike
    # Dirichlet(alpha * 1_k): each weight's variance is (1/k)(1 - 1/k) / (k alpha + 1)
    np.testing.assert_allclose(weights.var(1), 0.25 * 0.75 / (4 * alpha + 1), rtol=0.05)


def test_pair_mode_groups_k_samples_that_share_one_draw():
    plan = create_mixer(KMixupConfig(k=3, mode="pair"), 9, epochs=1, seed=2).draw_plan(9, 4, 4)
    partner, weights = plan.partner.numpy(), plan.weights.numpy()
    for i in range(9):
        group = [i, *partner[:, i]]
        assert len(set(group)) == 3 and all(np.array_equal(weights[:, g], weights[:, i]) for g in group)
        for slot in range(2):
            assert sorted(partner[slot, group]) == sorted(group)


def test_symmetric_lam_alpha_zero_prob_disable_and_resume():
    symmetric = create_mixer(KMixupConfig(k=4, mode="elem", symmetric_lam=True), 8, epochs=1, seed=3)
    for _ in range(5):
        weights = symmetric.draw_plan(8, 4, 4).weights
        assert (weights[0] == weights.max(0).values).all()  # the sample keeps the largest weight
    images, labels = indexed(8), torch.arange(8)
    for cfg in (KMixupConfig(alpha=0.0, mode="elem"), KMixupConfig(prob=0.0, mode="elem")):
        out, targets = create_mixer(cfg, 8, epochs=1)(images.clone(), labels, epoch=0)
        assert torch.equal(out, images) and torch.equal(targets, torch.eye(8))
    late = create_mixer(KMixupConfig(disable_epochs=1), 8, epochs=2)
    assert torch.equal(late(images.clone(), labels, epoch=1)[0], images)
    with pytest.raises(MixtrainError, match=r"augment.k must be >= 2 \(got 1\)"):
        KMixupConfig(k=1)

    first = create_mixer(KMixupConfig(mode="elem"), 8, epochs=1, seed=5)
    first(indexed(8), labels, epoch=0)
    again = create_mixer(KMixupConfig(mode="elem"), 8, epochs=1, seed=99)
    again.load_state_dict(first.state_dict())
    a, ta = first(indexed(8), labels, epoch=0)
    b, tb = again(indexed(8), labels, epoch=0)
    assert torch.equal(a, b) and torch.equal(ta, tb)


def test_the_preview_caption_names_all_k_sources_and_the_label_says_kmixup():
    _, targets = create_mixer(KMixupConfig(k=4, mode="pair"), 8, epochs=1, seed=0)(indexed(8), torch.arange(8), 0)
    for row in targets:
        assert len(caption(row, [f"c{i}" for i in range(8)])) == 4
    assert describe_augment(KMixupConfig(k=5, alpha=0.4, label_smoothing=0.1)) == "kmixup k=5 a=0.4 ls=0.1"


def test_kmixup_trains_and_previews_from_the_command_line(tmp_path):
    tiny = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "augment.k=4"]
    assert main(["train", "augment=kmixup", *tiny, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert main(["preview", "augment=kmixup", *tiny, f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    assert (tmp_path / "p" / "preview.png").stat().st_size > 1000
