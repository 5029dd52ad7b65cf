"""The mixing family (issue 24): FMix, ResizeMix, SaliencyMix, SmoothMix as registry entries, and
Manifold Mixup on a timm model.

Pixel provenance: each image's pixels encode its own index (channel k is 1 on sample k, 0 on the
others), so the mean of a mixed image's channels is the share of each source in it; every
target row must equal it, for every method, mode and batch size (odd ones and 1 included)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY

from mixtrain.cli import main
from mixtrain.mixing import (FMixConfig, ManifoldConfig, ManifoldMixer, ResizeMixConfig, SaliencyMixConfig,
                             SmoothMixConfig, create_mixer, draw_plan, mix_images, mix_targets, stage_modules)
from mixtrain.mixing.saliencymix import salient_points

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {"fmix": FMixConfig, "resizemix": ResizeMixConfig, "saliencymix": SaliencyMixConfig,
           "smoothmix": SmoothMixConfig}


def indexed(batch: int, size: int = 16) -> torch.Tensor:
    """``[B, B, S, S]``: channel k is 1 on sample k and 0 elsewhere."""
    return torch.eye(batch)[:, :, None, None].expand(batch, batch, size, size).contiguous()


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("batch", [1, 7, 8])
def test_each_target_row_is_the_share_of_each_source_in_the_mixed_image(method, mode, batch):
    mixer = create_mixer(METHODS[method](mode=mode), num_classes=batch, epochs=1, seed=batch)
    for _ in range(3):  # a few draws: each a new plan
        images, labels = indexed(batch), torch.arange(batch)
        mixed, targets = mixer(images, labels, epoch=0)
        provenance = mixed.mean(dim=(2, 3))
        torch.testing.assert_close(targets, provenance, atol=1e-6, rtol=0)
        assert torch.allclose(targets.sum(1), torch.ones(batch))
    if batch > 1:
        assert (targets.max(1).values < 1).any()  # something mixed


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prob_disable_epochs_and_smoothing_are_the_plan_rules(method):
    images, labels = indexed(8), torch.arange(8)
    never = create_mixer(METHODS[method](mode="elem", prob=0.0), 8, epochs=2)
    out, targets = never(images.clone(), labels, epoch=0)
    assert torch.equal(out, images) and torch.equal(targets, torch.eye(8))
    late = create_mixer(METHODS[method](mode="elem", disable_epochs=1), 8, epochs=2)
    assert torch.equal(late(images.clone(), labels, epoch=1)[0], images)  # the last epoch trains unmixed
    smooth = create_mixer(METHODS[method](mode="elem", prob=0.0, label_smoothing=0.1), 8, epochs=2)
    assert smooth(images.clone(), labels, epoch=0)[1][0, 0] == pytest.approx(0.9 + 0.1 / 8)


@pytest.mark.parametrize("method", ["fmix", "saliencymix", "smoothmix"])
def test_symmetric_lam_keeps_the_larger_share_with_the_sample(method):
    mixer = create_mixer(METHODS[method](mode="elem", symmetric_lam=True), 8, epochs=1, seed=3)
    for _ in range(5):
        _, targets = mixer(indexed(8), torch.arange(8), epoch=0)
        assert (targets.diagonal() >= 0.5 - 1e-6).all()


def test_resizemix_refuses_symmetric_lam():
    from mixtrain.errors import MixtrainError

    with pytest.raises(MixtrainError, match="augment.symmetric_lam is not meaningful with augment=resizemix"):
        ResizeMixConfig(symmetric_lam=True)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_restored_mixer_draws_the_same_next_batch(method):
    cfg = METHODS[method](mode="elem")
    first = create_mixer(cfg, 8, epochs=1, seed=5)
    first(indexed(8), torch.arange(8), epoch=0)
    state = first.state_dict()
    again = create_mixer(cfg, 8, epochs=1, seed=99)
    again.load_state_dict(state)
    a, ta = first(indexed(8), torch.arange(8), epoch=0)
    b, tb = again(indexed(8), torch.arange(8), epoch=0)
    assert torch.equal(a, b) and torch.equal(ta, tb)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_resizemix_pastes_the_whole_partner_resized_into_its_patch(mode):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    mixer = create_mixer(ResizeMixConfig(mode=mode), 2, epochs=1, seed=1)
    mixed, _ = mixer(images.clone(), torch.arange(2), epoch=0)
    for i, partner in ((0, 1), (1, 0)):
        changed = (mixed[i] != images[i]).any(0)
        if not changed.any():
            continue
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        patch = F.interpolate(images[partner:partner + 1], size=(int(y1 - y0), int(x1 - x0)), mode="nearest-exact")[0]
        assert torch.equal(mixed[i, :, y0:y1, x0:x1], patch)


def test_saliencymix_centres_the_box_on_the_partners_salient_spot():
    images = torch.zeros(4, 3, 32, 32)
    spots = [(5, 6), (20, 25), (28, 3), (12, 14)]
    for i, (y, x) in enumerate(spots):
        images[i, :, y - 1:y + 2, x - 1:x + 2] = 5.0  # one bright spot on a flat image
    points = salient_points(images)
    for (y, x), (py, px) in zip(spots, points.tolist()):
        assert abs(py - y) <= 1 and abs(px - x) <= 1
    mixer = create_mixer(SaliencyMixConfig(mode="elem"), 4, epochs=1, seed=2)
    mixed, targets = mixer(images.clone() + torch.arange(4.0).view(4, 1, 1, 1) / 10, torch.arange(4), epoch=0)
    for i in range(4):
        others = targets[i].clone()
        others[i] = -1
        partner = int(others.argmax())
        if targets[i, i] < 1:
            y, x = spots[partner]
            assert mixed[i, 0, y, x] == images[partner, 0, y, x] + partner / 10  # the spot came along


def test_saliency_on_the_host_finds_the_point_the_device_finds():
    from mixtrain.mixing.saliencymix import host_salient_point

    torch.manual_seed(1)
    images = torch.rand(6, 3, 24, 40)
    images[:, :, 3:6, 30:33] += torch.linspace(0.5, 3, 6).view(6, 1, 1, 1)  # a spot of varying strength
    device = salient_points(images)
    for image, point in zip(images, device.tolist()):
        assert host_salient_point(image.numpy()).tolist() == point


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_and_previews_from_the_command_line(method, tmp_path):
    tiny = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "augment.mode=pair"]
    assert main(["train", f"augment={method}", *tiny, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert main(["preview", f"augment={method}", *tiny, f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    assert (tmp_path / "p" / "preview.png").stat().st_size > 1000


# --------------------------------------------------------------------------- manifold mixup on timm


@pytest.fixture(scope="module")
def timm_resnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=5).eval()


def test_manifold_finds_a_timm_models_stages_by_feature_info(timm_resnet):
    names = [i["module"] for i in timm_resnet.feature_info]
    assert [timm_resnet.get_submodule(n) for n in names] == stage_modules(timm_resnet)


def test_manifold_at_layer_0_is_input_mixup_on_a_timm_model(timm_resnet):
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 5
    mixer = ManifoldMixer(ManifoldConfig(layers=[0], alpha=1.0), 5, epochs=1, seed=4)
    logits, targets = mixer.mixed_forward(timm_resnet, images, labels, epoch=0)
    rng = np.random.default_rng([4, 0, 17])  # the mixer's stream: the layer first, then the plan
    rng.integers(1)
    plan = draw_plan(mixer.spec, rng, 6, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(logits, timm_resnet(mix_images(images, plan)))
    torch.testing.assert_close(targets, mix_targets(mixer.targets(labels), plan))


def test_manifold_mixes_the_chosen_timm_stage_only(timm_resnet):
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 5
    stages = stage_modules(timm_resnet)  # act1, layer1, ..., layer4
    seen = {}
    hooks = [stage.register_forward_pre_hook(lambda m, args, k=k: seen.__setitem__(k, args[0].clone()))
             for k, stage in enumerate(stages)]
    outputs = {}
    out_hooks = [stage.register_forward_hook(lambda m, args, out, k=k: outputs.__setitem__(k, out.clone()))
                 for k, stage in enumerate(stages)]
    try:
        with torch.no_grad():
            timm_resnet(images)
        clean_in, clean_out = dict(seen), dict(outputs)
        mixer = ManifoldMixer(ManifoldConfig(layers=[2], alpha=1.0), 5, epochs=1, seed=7)
        with torch.no_grad():
            mixer.mixed_forward(timm_resnet, images, labels, epoch=0)
    finally:
        for h in hooks + out_hooks:
            h.remove()
    rng = np.random.default_rng([7, 0, 17])
    rng.integers(1)
    plan = draw_plan(mixer.spec, rng, 6, 1, 1)
    for k in (0, 1):  # before the chosen stage's output: the clean values
        torch.testing.assert_close(seen[k], clean_in[k])
    torch.testing.assert_close(seen[2], mix_images(clean_out[1], plan))  # layer 2 = the output of stage 2 (layer1)
    assert not any(stage._forward_hooks for stage in stages) or all(
        len(stage._forward_hooks) == 0 for stage in stages)


def test_manifold_on_a_timm_model_trains_from_the_command_line(tmp_path):
    assert main(["train", "model=timm", "model.name=resnet18", "augment=manifold", *TINY, "dataset.crop_padding=0",
                 "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path / 'r'}"]) == 0
    assert main(["train", "model=timm", "model.name=resnet18", "augment=manifold", "augment.layers=[9]", *TINY,
                 f"hydra.run.dir={tmp_path / 'bad'}"]) == 2
