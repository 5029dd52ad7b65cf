"""Mixing semantics: each property the Mixing issue names is a test here."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, make_config, make_image_folder
from timm.data import Mixup
from timm.data.mixup import cutmix_bbox_and_lam

from mixtrain.mixing import (CutmixConfig, ManifoldConfig, Mixer, MixPlan, MixSpec, MixupConfig, SwitchConfig, box_lam,
                             create_mixer, cutmix_boxes, mix_images, mix_targets, one_hot, stage_modules)
from mixtrain.mixing.losses import binary_cross_entropy, create_loss
from mixtrain.mixing.plans import draw_many, draw_one
from mixtrain.models import create_model
from mixtrain.train.training import fit

MODES = ["batch", "pair", "elem"]
KINDS = {
    "mixup": lambda **kw: MixupConfig(alpha=1.0, **kw),
    "cutmix": lambda **kw: CutmixConfig(alpha=1.0, **kw),
    "switch": lambda **kw: SwitchConfig(**kw),
}


def id_images(batch, height=8, width=8):
    """Sample i is filled with the value i: every pixel says where it came from."""
    return torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1).expand(batch, 3, height, width).clone()


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("kind,mode,smoothing,batch", list(itertools.product(KINDS, MODES, [0.0, 0.1], [1, 2, 7, 16])))
def test_targets_are_distributions_for_every_mode_and_any_batch_size(kind, mode, smoothing, batch):
    mixer = Mixer(KINDS[kind](mode=mode, label_smoothing=smoothing), num_classes=5, epochs=1, seed=batch)
    labels = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(batch))
    for _ in range(20):
        images, targets = mixer(torch.randn(batch, 3, 8, 8), labels, epoch=0)
        assert images.shape == (batch, 3, 8, 8) and targets.shape == (batch, 5)
        assert (targets >= 0).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(batch), rtol=0, atol=1e-6)


def test_label_smoothing_is_timms():
    targets = one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.2)
    torch.testing.assert_close(targets, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))


# --------------------------------------------------------------------------- CutMix pixel counts


@pytest.mark.parametrize("mode,batch", [("batch", 16), ("pair", 16), ("pair", 7), ("elem", 16), ("elem", 5)])
def test_cutmix_label_weights_equal_pixel_fractions(mode, batch):
    mixer = Mixer(CutmixConfig(alpha=1.0, mode=mode), num_classes=batch, epochs=1, seed=3)
    labels = torch.arange(batch)  # class i == sample i, so the target column says the source
    clipped = 0
    for _ in range(40):
        plan = mixer.draw_plan(batch, 10, 12)
        images = mix_images(id_images(batch, 10, 12), plan)
        targets = mix_targets(one_hot(labels, batch), plan)
        for i in range(batch):
            own = (images[i] == i).float().mean().item()
            j = int(plan.partner[i])
            if j == i:
                assert targets[i, i] == 1.0 and own == 1.0
                continue
            from_partner = (images[i] == j).float().mean().item()
            assert own + from_partner == pytest.approx(1.0)
            assert targets[i, i].item() == pytest.approx(own, abs=1e-6)
            assert targets[i, j].item() == pytest.approx(from_partner, abs=1e-6)
        raw = plan.boxes
        clipped += int(((raw[:, 0] == 0) | (raw[:, 1] == 10) | (raw[:, 2] == 0) | (raw[:, 3] == 12)).sum())
    assert clipped > 0  # boxes clipped at the border were among those checked


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_batch_plans_equal_their_per_sample_form(kind):
    mixer = Mixer(KINDS[kind](mode="batch"), num_classes=4, epochs=1, seed=1)
    x, labels = torch.randn(9, 3, 8, 8), torch.arange(9) % 4
    for _ in range(10):
        plan = mixer.draw_plan(9, 8, 8)
        wide = dataclasses.replace(plan, shared=False)  # the general path, a weight per sample
        torch.testing.assert_close(mix_images(x, plan), mix_images(x, wide))
        torch.testing.assert_close(mix_targets(one_hot(labels, 4), plan), mix_targets(one_hot(labels, 4), wide))


def test_uncorrected_lambda_is_available_like_timm():
    mixer = Mixer(CutmixConfig(alpha=1.0, mode="elem", correct_lam=False), num_classes=4, epochs=1, seed=0)
    plans = [mixer.draw_plan(64, 8, 8) for _ in range(5)]
    differs = [not np.allclose(p.lam.numpy(), box_lam(p.boxes.numpy(), 8, 8)) for p in plans]
    assert any(differs)


def test_minmax_boxes_stay_inside_and_in_range():
    uniform = np.random.default_rng(0).random((500, 4))
    boxes = cutmix_boxes(np.full(500, 0.5), 32, 40, uniform, minmax=(0.2, 0.8))
    h, w = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] <= 32).all() and (boxes[:, 2] >= 0).all() and (boxes[:, 3] <= 40).all()
    assert h.min() >= 6 and h.max() < 25 and w.min() >= 8 and w.max() < 32


# --------------------------------------------------------------------------- randomness


def test_partners_come_from_the_mixers_generator_only():
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    plans = []
    for seed, rank in [(0, 0), (0, 0), (0, 1), (1, 0)]:
        mixer = Mixer(MixupConfig(mode="elem"), num_classes=3, epochs=1, seed=seed, rank=rank)
        plans.append(mixer.draw_plan(32, 4, 4))
    assert torch.equal(plans[0].partner, plans[1].partner) and torch.equal(plans[0].lam, plans[1].lam)
    assert not torch.equal(plans[0].partner, plans[2].partner)  # another rank, another stream
    assert not torch.equal(plans[0].partner, plans[3].partner)  # another seed
    assert np.array_equal(np_state[1], np.random.get_state()[1])  # global NumPy state untouched
    assert torch.equal(torch_state, torch.get_rng_state())  # global torch state untouched


def test_pair_mode_mixes_symmetric_pairs():
    mixer = Mixer(MixupConfig(mode="pair"), num_classes=3, epochs=1, seed=0)
    plan = mixer.draw_plan(9, 4, 4)
    partner = plan.partner
    assert torch.equal(partner[partner], torch.arange(9))  # an involution: pairs
    assert int((partner == torch.arange(9)).sum()) == 1  # odd batch: one sample left unmixed
    torch.testing.assert_close(plan.lam, plan.lam[partner])  # both members share lambda


def test_symmetric_lam_and_prob_and_switch_prob():
    mixer = Mixer(MixupConfig(mode="elem", symmetric_lam=True), num_classes=3, epochs=1, seed=0)
    assert (mixer.draw_plan(4096, 4, 4).lam >= 0.5).all()
    never = Mixer(MixupConfig(mode="elem", prob=0.0), num_classes=3, epochs=1)
    assert never.draw_plan(256, 4, 4).is_identity
    some = Mixer(MixupConfig(mode="elem", prob=0.3), num_classes=3, epochs=1)
    fraction = (some.draw_plan(20000, 4, 4).lam < 1).double().mean().item()
    assert fraction == pytest.approx(0.3, abs=0.02)
    batches = Mixer(MixupConfig(mode="batch", prob=0.5), num_classes=3, epochs=1)
    mixed = sum(not batches.draw_plan(8, 4, 4).is_identity for _ in range(2000)) / 2000
    assert mixed == pytest.approx(0.5, abs=0.04)
    for switch_prob, expect in [(0.0, False), (1.0, True)]:
        plan = Mixer(SwitchConfig(mode="elem", switch_prob=switch_prob), 3, 1).draw_plan(64, 8, 8)
        assert bool(plan.cutmix.all()) == expect and bool(plan.cutmix.any()) == expect


def test_alpha_zero_disables_mixing():
    mixer = Mixer(MixupConfig(alpha=0.0, mode="elem"), num_classes=3, epochs=1)
    images = torch.randn(6, 3, 4, 4)
    out, targets = mixer(images, torch.tensor([0, 1, 2, 0, 1, 2]), epoch=0)
    assert torch.equal(out, images) and torch.equal(targets, one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3))


def test_disable_epochs_turns_mixing_off_but_keeps_smoothing():
    mixer = Mixer(MixupConfig(disable_epochs=2, label_smoothing=0.1), num_classes=4, epochs=5)
    assert [mixer.active(e) for e in range(5)] == [True, True, True, False, False]
    images, labels = torch.randn(8, 3, 4, 4), torch.arange(8) % 4
    out, targets = mixer(images, labels, epoch=4)
    assert torch.equal(out, images) and torch.equal(targets, one_hot(labels, 4, 0.1))


# --------------------------------------------------------------------------- vectorized


@pytest.mark.parametrize("kind,mode", [("mixup", "elem"), ("cutmix", "elem"), ("switch", "pair"), ("cutmix", "pair")])
def test_per_sample_modes_run_the_same_ops_for_any_batch_size(kind, mode):
    # A Python loop over samples would make the number of tensor ops grow with the batch.
    def op_count(batch):
        mixer = Mixer(KINDS[kind](mode=mode), num_classes=10, epochs=1, seed=0)
        images, labels = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            mixer(images, labels, epoch=0)
        return len([e for e in prof.events() if e.name.startswith("aten::")])

    assert op_count(8) == op_count(512)


# --------------------------------------------------------------------------- equivalence with timm


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_batch_mixup_and_cutmix_equal_timm(smoothing, monkeypatch):
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    for use_cutmix, lam in [(False, 0.37), (True, 0.61)]:
        timm_mix = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=smoothing, num_classes=5)
        monkeypatch.setattr(timm_mix, "_params_per_batch", lambda: (lam, use_cutmix))
        np.random.seed(11)
        timm_x, timm_y = timm_mix(x.clone(), y)
        box = None
        if use_cutmix:  # replay timm's box draw (same NumPy seed) to hand mixtrain the same box
            np.random.seed(11)
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam)
            box = (int(yl), int(yh), int(xl), int(xh))
        plan = MixPlan(torch.arange(7, -1, -1), torch.full((8,), lam, dtype=torch.float64),  # timm pairs i with B-1-i
                       torch.full((8,), box is not None), torch.tensor(box or (0, 0, 0, 0)).expand(8, 4), shared=True)
        torch.testing.assert_close(mix_images(x, plan), timm_x)
        torch.testing.assert_close(mix_targets(one_hot(y, 5, smoothing), plan), timm_y)


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_per_sample_mixup_and_cutmix_equal_timm(mode, monkeypatch):
    batch = 8
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(batch) % 6
    n = batch // 2 if mode == "pair" else batch
    lams = np.linspace(0.2, 0.9, n).astype(np.float32)
    use_cutmix = np.array([i % 2 == 0 for i in range(n)])
    timm_mix = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=6)
    monkeypatch.setattr(timm_mix, "_params_per_elem", lambda size: (lams.copy(), use_cutmix.copy()))
    np.random.seed(5)
    timm_x, timm_y = timm_mix(x.clone(), y)
    # Replay timm's box draws (same NumPy seed, same order) to hand the same boxes to mixtrain.
    np.random.seed(5)
    boxes, lam_out = torch.zeros(batch, 4, dtype=torch.long), torch.tensor(lams, dtype=torch.float64)
    for i in range(n):
        if use_cutmix[i]:
            (yl, yh, xl, xh), corrected = cutmix_bbox_and_lam(x[i].shape, lams[i])
            boxes[i] = torch.tensor([yl, yh, xl, xh])
            lam_out[i] = corrected
    cutmix = torch.tensor(use_cutmix)
    if mode == "pair":  # the second member of each pair mirrors the first
        boxes[n:] = boxes[:n].flip(0)
        lam_out = torch.cat([lam_out, lam_out.flip(0)])
        cutmix = torch.cat([cutmix, cutmix.flip(0)])
    plan = MixPlan(torch.arange(batch - 1, -1, -1), lam_out, cutmix, boxes)
    torch.testing.assert_close(mix_images(x, plan), timm_x)
    torch.testing.assert_close(mix_targets(one_hot(y, 6, 0.1), plan), timm_y)


# --------------------------------------------------------------------------- manifold


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_manifold_mixes_the_hidden_state_after_the_chosen_stage(layer):
    model = create_model(make_config("model=resnet20").model, num_classes=4).eval()
    mixer = create_mixer(ManifoldConfig(alpha=1.0, layers=[layer], mode="elem"), num_classes=4, epochs=1, seed=2)
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    reference = create_mixer(ManifoldConfig(alpha=1.0, layers=[layer], mode="elem"), num_classes=4, epochs=1, seed=2)
    reference.rng.integers(1)  # the layer draw
    plan = reference.draw_plan(6, 1, 1)

    logits, targets = mixer.mixed_forward(model, images, labels, epoch=0)
    hidden = mix_images(images, plan) if layer == 0 else images
    hidden = model.stem(hidden)
    for k, stage in enumerate(model.stages, start=1):
        hidden = stage(hidden)
        if k == layer:
            hidden = mix_images(hidden, plan)
    torch.testing.assert_close(logits, model.head(hidden))
    torch.testing.assert_close(targets, mix_targets(one_hot(labels, 4), plan))
    assert not any(stage._forward_hooks for stage in stage_modules(model))  # the hook is gone


# --------------------------------------------------------------------------- in the training loop


def test_bce_loss_and_threshold():
    logits, targets = torch.randn(4, 3), torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0], [1, 0, 0], [0, 0, 1.0]])
    torch.testing.assert_close(binary_cross_entropy(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    torch.testing.assert_close(binary_cross_entropy(logits, targets, threshold=0.25),
                               F.binary_cross_entropy_with_logits(logits, (targets > 0.25).float()))
    loss = create_loss(make_config("augment=mixup", "augment.loss=bce", "augment.bce_target_threshold=0.2").augment)
    torch.testing.assert_close(loss(logits, targets), binary_cross_entropy(logits, targets, 0.2))


def test_training_accuracy_counts_the_dominant_mixed_label():
    from mixtrain.artifacts.checkpoint import EpochProgress
    from mixtrain.data.device_loader import DeviceLoader
    from mixtrain.data.source import LoaderOptions
    from mixtrain.runtime.precision import Precision
    from mixtrain.train.engine import Step, Tally, train_step

    class Echo(torch.nn.Module):
        """Predicts whatever class its input's first pixel encodes."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x[:, :, 0, 0] * 100 + self.w

    class Swapping(Mixer):
        # Every sample takes 80% of its partner: the dominant label is the partner's.
        def draw_plan(self, batch, height, width):
            return MixPlan(torch.arange(batch).roll(1), torch.full((batch,), 0.2, dtype=torch.float64),
                           torch.zeros(batch, dtype=torch.bool), torch.zeros(batch, 4, dtype=torch.long))

    labels = torch.arange(16) % 3
    images = F.one_hot(labels, 3).to(torch.uint8).view(16, 3, 1, 1).expand(16, 3, 4, 4).contiguous() * 255
    loader = DeviceLoader(images, labels, [0, 0, 0], [1, 1, 1], train=True, options=LoaderOptions(8), padding=0)
    model = Echo()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    precision = Precision("cpu", None, torch.amp.GradScaler("cpu", enabled=False))
    mixer = Swapping(MixupConfig(), num_classes=3, epochs=1)
    step, tally = Step(opt, precision, mixer, create_loss(MixupConfig())), Tally(EpochProgress(), torch.device("cpu"))
    for i, (x, y) in enumerate(loader):
        tally.add(train_step(model, x, y, 0, step), len(y), i)
        sched.step()
    stats = tally.read()
    assert 100.0 * stats["correct"] / stats["seen"] == pytest.approx(100.0)  # the mixed image shows the partner, as does the target


def test_mixing_stops_for_the_last_epochs_even_with_persistent_workers(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    seen = {}
    real_forward = Mixer.mixed_forward

    def recording_forward(self, model, images, labels, epoch):
        logits, targets = real_forward(self, model, images, labels, epoch)
        seen.setdefault(epoch, []).append(bool((targets.max(1).values < 1).any()))
        return logits, targets

    monkeypatch.setattr(Mixer, "mixed_forward", recording_forward)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                      *TINY, "trainer.num_workers=1", "trainer.epochs=3", "augment=mixup", "augment.disable_epochs=1")
    fit(cfg, tmp_path / "run")
    assert any(seen[0]) and any(seen[1]) and not any(seen[2])


def test_evaluation_never_mixes(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                      "dataset.image_size=16", *TINY, "augment=cutmix")
    import mixtrain.train.parts as parts
    calls = {"train": 0, "eval": 0}
    real_evaluate, real_forward = parts.evaluate, Mixer.mixed_forward
    in_eval = [False]

    def counting_forward(self, *args, **kwargs):
        calls["eval" if in_eval[0] else "train"] += 1
        return real_forward(self, *args, **kwargs)

    def flagged_evaluate(*args, **kwargs):
        in_eval[0] = True
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            in_eval[0] = False

    monkeypatch.setattr(Mixer, "mixed_forward", counting_forward)
    monkeypatch.setattr(parts, "evaluate", flagged_evaluate)
    fit(cfg, tmp_path / "run")
    assert calls["train"] > 0 and calls["eval"] == 0


# --------------------------------------------------------------------------- seeing what is mixed


def test_preview_writes_a_captioned_grid(tmp_path):
    from helpers import run_cli
    from PIL import Image

    make_image_folder(tmp_path / "data", per_class=8, val_per_class=2, size=16)
    result = run_cli("preview", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                     "dataset.image_size=16", *TINY, "trainer.batch_size=12", "augment=cutmix", "augment.mode=elem",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / result.stdout.strip().splitlines()[-1]
    assert path.name == "preview.png" and path.parent.parent.parent.name == "preview"
    with Image.open(path) as img:
        # 12 tiles of 16 px enlarged 6x (96 px), 8 per row, each with a 26 px caption strip.
        assert img.size == (8 * 96, 2 * (96 + 26))


def test_caption_names_both_sources_and_their_weights():
    from mixtrain.mixing.preview import caption

    target = torch.tensor([0.05, 0.65, 0.05, 0.25])
    assert caption(target, ["ant", "bee", "cat", "dog"]) == ["bee 0.65", "dog 0.25"]
    assert caption(torch.tensor([0.1, 0.7, 0.1, 0.1]), ["ant", "bee", "cat", "dog"]) == ["bee 0.70"]


def test_run_logs_the_mixed_batch_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                      "dataset.image_size=16", *TINY, "augment=mixup")
    fit(cfg, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "mixing/batch" in events.Tags()["images"]


@pytest.mark.parametrize("spec", [
    MixSpec(mixup_alpha=1.0), MixSpec(cutmix_alpha=1.0), MixSpec(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5),
    MixSpec(cutmix_alpha=0.4, minmax=(0.2, 0.8)), MixSpec(cutmix_alpha=1.0, correct_lam=False, prob=0.6),
    MixSpec(mixup_alpha=0.2, symmetric=True, prob=0.5), MixSpec(prob=0.0)])
def test_the_batch_draw_in_scalars_equals_one_draw_of_the_vector_rule(spec):
    # Batch mode draws with Python scalars (cheaper per step); the rule must be the same, number for number.
    one, many = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(300):
        lam, cutmix, box = draw_one(spec, one, 13, 17)
        lams, kinds, boxes = draw_many(spec, many, 1, 13, 17)
        assert (lam, cutmix, box) == (float(lams[0]), bool(kinds[0]), tuple(boxes[0].tolist()))
