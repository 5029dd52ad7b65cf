"""Mosaic: four images on a 2x2 grid cut at a random centre, labels by area (mixtrain/mixing/mosaic.py).

Pixel provenance, as in test_mixing_family.py: channel k of sample k is 1 and every other channel 0,
so a mixed image's channel means are the share of each source in it; the target row must equal them."""

import numpy as np
import pytest
import torch
from helpers import TINY
from PIL import Image

from mixtrain.cli import main
from mixtrain.mixing import create_mixer, describe_augment
from mixtrain.mixing.mosaic import MosaicConfig
from mixtrain.mixing.preview import caption

pytestmark = pytest.mark.usefixtures("one_thread")


def indexed(batch: int, height: int = 12, width: int = 10) -> torch.Tensor:
    return torch.eye(batch)[:, :, None, None].expand(batch, batch, height, width).contiguous()


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("batch", [1, 7, 8])
def test_each_target_row_is_the_area_of_each_source_in_the_mosaic(mode, batch):
    mixer = create_mixer(MosaicConfig(mode=mode), num_classes=batch, epochs=1, seed=batch)
    for _ in range(4):
        mixed, targets = mixer(indexed(batch), torch.arange(batch), epoch=0)
        torch.testing.assert_close(targets, mixed.mean(dim=(2, 3)), atol=1e-6, rtol=0)
        assert torch.allclose(targets.sum(1), torch.ones(batch))
        if batch > 1:
            assert (targets.max(1).values < 1).any()


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_the_sample_keeps_the_top_left_cell_and_its_partners_fill_the_others(mode):
    batch, height, width = 8, 12, 10
    images = torch.randn(batch, 3, height, width)
    cfg = MosaicConfig(mode=mode)
    plan = create_mixer(cfg, batch, epochs=1, seed=4).draw_plan(batch, height, width)  # the mixer's first plan
    mixed, _ = create_mixer(cfg, batch, epochs=1, seed=4)(images.clone(), torch.arange(batch), epoch=0)
    partner, boxes = plan.partner.numpy(), plan.boxes.numpy()
    for i in range(batch):
        (_, cy, cx, _), *_ = boxes[:, 0 if plan.shared else i].tolist()
        assert int(0.25 * height) <= cy <= int(0.75 * height) and int(0.25 * width) <= cx <= int(0.75 * width)
        cells = {0: (slice(0, cy), slice(0, cx)), 1: (slice(0, cy), slice(cx, width)),
                 2: (slice(cy, height), slice(0, cx)), 3: (slice(cy, height), slice(cx, width))}
        for cell, (rows, cols) in cells.items():
            source = i if cell == 0 else partner[cell - 1, i]
            assert torch.equal(mixed[i, :, rows, cols], images[source, :, rows, cols])


def test_in_pair_mode_four_samples_share_a_centre_and_each_fills_every_cell_once():
    plan = create_mixer(MosaicConfig(mode="pair"), 8, epochs=1, seed=2).draw_plan(8, 16, 16)
    partner, boxes = plan.partner.numpy(), plan.boxes.numpy()
    for i in range(8):
        group = [i, *partner[:, i]]
        assert len(set(group)) == 4
        assert all(np.array_equal(boxes[:, g], boxes[:, i]) for g in group)  # one centre for the group
        for slot in range(3):  # across the group, each member in each partner cell once
            assert sorted(partner[slot, group]) == sorted(group)


def test_the_centre_range_and_symmetric_lam():
    centred = create_mixer(MosaicConfig(mode="elem", center_min=0.5, center_max=0.5), 4, epochs=1)
    assert (centred.draw_plan(4, 8, 8).weights == 0.25).all()  # a grid cut at the centre: four equal cells
    symmetric = create_mixer(MosaicConfig(mode="elem", symmetric_lam=True), 8, epochs=1, seed=3)
    for _ in range(5):
        weights = symmetric.draw_plan(8, 16, 16).weights
        assert (weights[0] >= weights[1:].max(0).values).all()  # the sample's own cell is the largest
    from mixtrain.errors import MixtrainError

    with pytest.raises(MixtrainError, match="augment.center_min/center_max must be 0 <= center_min <= center_max"):
        MosaicConfig(center_min=0.8, center_max=0.2)


def test_prob_disable_epochs_smoothing_and_resume():
    images, labels = indexed(8), torch.arange(8)
    never = create_mixer(MosaicConfig(mode="elem", prob=0.0), 8, epochs=2)
    out, targets = never(images.clone(), labels, epoch=0)
    assert torch.equal(out, images) and torch.equal(targets, torch.eye(8))
    late = create_mixer(MosaicConfig(disable_epochs=1), 8, epochs=2)
    assert torch.equal(late(images.clone(), labels, epoch=1)[0], images)
    smooth = create_mixer(MosaicConfig(mode="elem", label_smoothing=0.1), 8, epochs=1, seed=1)
    _, targets = smooth(images.clone(), labels, epoch=0)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 8 - 1e-7  # smoothed before mixing: every class keeps the floor

    first = create_mixer(MosaicConfig(mode="pair"), 8, epochs=1, seed=5)
    first(indexed(8), labels, epoch=0)
    again = create_mixer(MosaicConfig(mode="pair"), 8, epochs=1, seed=99)
    again.load_state_dict(first.state_dict())
    a, ta = first(indexed(8), labels, epoch=0)
    b, tb = again(indexed(8), labels, epoch=0)
    assert torch.equal(a, b) and torch.equal(ta, tb)


def test_the_preview_caption_names_all_four_sources_and_the_label_says_mosaic():
    mixer = create_mixer(MosaicConfig(mode="pair", center_min=0.3, center_max=0.6), 8, epochs=1, seed=0)
    _, targets = mixer(indexed(8), torch.arange(8), epoch=0)
    classes = [f"c{i}" for i in range(8)]
    for i in range(8):
        lines = caption(targets[i], classes)
        assert len(lines) == 4 and {line.split()[0] for line in lines} == {f"c{j}" for j in targets[i].nonzero()[:, 0]}
    assert describe_augment(MosaicConfig(mode="elem")) == "mosaic c=0.25-0.75 elem"


def test_mosaic_trains_and_previews_from_the_command_line(tmp_path):
    tiny = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "augment.mode=pair"]
    assert main(["train", "augment=mosaic", *tiny, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert main(["preview", "augment=mosaic", *tiny, f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    with Image.open(tmp_path / "p" / "preview.png") as png:  # 32 px tiles enlarged to 96, 8 in a row
        assert png.size[0] == 8 * 96 and png.size[1] > 96 + 2 * 12 + 2  # captions of more than two labels
