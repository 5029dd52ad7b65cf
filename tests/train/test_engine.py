"""The engine: a pure step, one sync point, and the parts timm users rely on (issue 12)."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import TINY, make_config, make_image_folder

from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.checkpoint import EpochProgress
from mixtrain.cli import main, objective_value
from mixtrain.config import AugmentConfig
from mixtrain.data.device_loader import DeviceLoader
from mixtrain.data.source import LoaderOptions
from mixtrain.mixing import Mixer, MixupConfig
from mixtrain.mixing.losses import create_loss
from mixtrain.runtime.precision import Precision
from mixtrain.train.engine import Step, Tally, Trainer, train_step
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("engine"), per_class=12, val_per_class=4, size=16)


def folder(root, *extra):
    return ["dataset=imagefolder", f"dataset.root={root}", "dataset.cache=true", "dataset.image_size=16", *TINY, *extra]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


FP32 = Precision("cpu", None, torch.amp.GradScaler("cpu", enabled=False))


def mlp():
    torch.manual_seed(0)  # no BatchNorm: micro-batches see the same function as the whole batch
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def tiny_loader(batch=8, n=32):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return DeviceLoader(images, torch.arange(n) % 3, [0.5] * 3, [0.25] * 3, train=True, options=LoaderOptions(batch), padding=0)


# --------------------------------------------------------------------------- one sync point


def test_no_host_reads_between_sync_points(data_root, tmp_path, monkeypatch):
    """Count every read of a tensor's value on the host (item, bool, tolist, float, int) while
    the step loop runs, outside the trainer's sync points: there must be none."""
    state = {"loop": False, "sync": False, "epoch": False}
    reads, synced = [], []
    for name in ("item", "__bool__", "tolist", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if state["loop"] and not state["sync"] and not caller.startswith("mixtrain.mixing"):
                # (the mixer draws its plans on the host from its own CPU generator: no device value)
                reads.append(f"{_name} from {caller}")
            elif state["sync"]:
                synced.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    real_iter, real_sync, real_epoch = DeviceLoader.iter_from, Trainer.sync, Trainer.train_epoch

    def flagged_iter(self, start_step=0):  # the training loop: from its first batch to its last
        for batch in real_iter(self, start_step):
            state["loop"] = self.train and state["epoch"]
            yield batch
        state["loop"] = False

    def flagged_epoch(self, epoch):
        state["epoch"] = True
        try:
            return real_epoch(self, epoch)
        finally:
            state["epoch"] = state["loop"] = False

    def flagged_sync(self, *args):
        state["sync"] = True
        try:
            return real_sync(self, *args)
        finally:
            state["sync"] = False

    monkeypatch.setattr(DeviceLoader, "iter_from", flagged_iter)
    monkeypatch.setattr(Trainer, "sync", flagged_sync)
    monkeypatch.setattr(Trainer, "train_epoch", flagged_epoch)
    cfg = make_config(*folder(data_root), "trainer.log_every=2", "trainer.batch_size=6", "trainer.epochs=2",
                      "augment=mixup", "trainer.ema.enabled=true", "trainer.clip_grad=norm", "trainer.accum_steps=2",
                      "trainer.checkpoint_every_steps=3")
    summary = fit(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    assert reads == []
    assert synced  # the counter works: the sync points read the tally


def test_tally_sums_only_applied_steps_and_locates_the_bad_ones():
    tally = Tally(EpochProgress(loss_sum=1.0, correct=2.0, seen=3), torch.device("cpu"))
    for step, (loss, ok) in enumerate([(1.0, True), (float("nan"), False), (2.0, True), (float("inf"), False),
                                       (3.0, False)]):
        out = SimpleNamespace(loss=torch.tensor(loss), correct=torch.tensor(4), applied=torch.tensor(ok),
                              grad_norm=None)
        tally.add(out, 10, step + 5)
    stats = tally.read()
    assert stats["loss_sum"] == 1.0 + 10 + 20 and stats["correct"] == 2 + 8 and stats["seen"] == 23
    assert (stats["skipped"], stats["run"], stats["longest_run"]) == (3, 2, 2)
    assert (stats["first_bad"], stats["last_bad"]) == (6, 9)
    assert tally.read()["skipped"] == 0  # counted once


# --------------------------------------------------------------------------- gradient accumulation and clipping


def grads_after(step_settings, model, loader, seed=1):
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    step_settings.mixer.rng = np.random.default_rng(seed)
    out = train_step(model, images, labels, 0, step_settings)
    return out, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("augment", [AugmentConfig(), MixupConfig(alpha=1.0), MixupConfig(alpha=1.0, mode="elem")])
def test_accumulation_gives_the_gradient_of_the_whole_batch(augment):
    loader = tiny_loader(batch=8)
    results = []
    for accum in (1, 4):
        model = mlp()
        step = Step(torch.optim.SGD(model.parameters(), lr=0.0), FP32, Mixer(augment, 3, 1), create_loss(augment), accum)
        results.append(grads_after(step, model, loader))
    (one, g1), (four, g4) = results
    for a, b in zip(g1, g4):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.loss, four.loss)
    assert int(one.correct) == int(four.correct)


def test_schedule_counts_optimizer_steps_with_accumulation(data_root, tmp_path):
    summary = fit(make_config(*folder(data_root), "trainer.accum_steps=3", "trainer.batch_size=6", "trainer.epochs=2"),
                  tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    assert saved["state"]["global_step"] == 2 * 6  # 36 images / 6 a step
    # The cosine over 12 updates: half way after the first epoch's 6, at its end after 12.
    assert [r["lr"] for r in metrics(tmp_path / "run")] == pytest.approx([0.05, 0.0], abs=1e-12)
    assert summary["status"] == "completed"


@pytest.mark.parametrize("mode", ["norm", "value", "agc"])
def test_clipping_follows_timm_and_reports_the_norm_before(mode):
    from timm.utils import dispatch_clip_grad

    loader = tiny_loader()
    model = mlp()
    plain = Step(torch.optim.SGD(model.parameters(), lr=0.0), FP32, Mixer(AugmentConfig(), 3, 1),
                 create_loss(AugmentConfig()))
    _, raw = grads_after(plain, model, loader)
    reference = [g.clone() for g in raw]
    for p, g in zip(model.parameters(), reference):
        p.grad = g
    dispatch_clip_grad(list(model.parameters()), 0.05, mode=mode)
    clipped = Step(plain.optimizer, FP32, plain.mixer, plain.loss_fn, clip_grad=mode, clip_value=0.05)
    out, got = grads_after(clipped, model, loader)
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b)
    expected_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    torch.testing.assert_close(out.grad_norm, expected_norm)
    if mode == "norm":
        assert float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in got]))) <= 0.05 + 1e-6


def test_fp16_clips_the_unscaled_gradients():
    loader = tiny_loader()
    model = mlp()
    scaled = Precision("cpu", None, torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True))
    step = Step(torch.optim.SGD(model.parameters(), lr=0.0), scaled, Mixer(AugmentConfig(), 3, 1),
                create_loss(AugmentConfig()), clip_grad="norm", clip_value=0.05)
    out, got = grads_after(step, model, loader)
    assert bool(out.applied) and 1e-3 < float(out.grad_norm) < 100  # the true norm, not 1024x it
    assert float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in got]))) <= 0.05 + 1e-6


# --------------------------------------------------------------------------- EMA


def test_ema_follows_the_per_step_decay_and_copies_batchnorm_buffers():
    from timm.utils import ModelEmaV3

    from mixtrain.train.parts import Ema

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEmaV3(model, decay=0.9, exclude_buffers=True)
    part = Ema(ema, model, every=2)
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0))
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step)
        model.train()(torch.randn(8, 4))  # moves the BatchNorm running statistics
        trainer.state.global_step = step
        part.step_end(trainer, None)
        if step % 2 == 0:
            decay = ema.get_decay(step // 2) ** 2  # 0 at the first update: the EMA starts as the weights
            expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e)
    for a, b in zip(model.buffers(), ema.module.buffers()):
        assert torch.equal(a, b)  # copied, not averaged


def test_ema_weights_are_evaluated_recorded_and_selectable(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    summary = fit(make_config(*folder(data_root), "trainer.epochs=3", "trainer.ema.enabled=true",
                              "trainer.ema.decay=0.5", "trainer.ema.select_best=true", "optim.lr=0.05"), run)
    records = metrics(run)
    assert all({"ema_val_acc1", "ema_val_ece", "ema_val_nll", "val_acc1"} <= set(r) for r in records)
    assert summary["final_ema_val_acc1"] == records[-1]["ema_val_acc1"]
    assert summary["best_ema_val_acc1"] == max(r["ema_val_acc1"] for r in records)
    assert "EMA acc" in capsys.readouterr().out
    best = checkpoint.load(run / "best.pt")
    best_epoch = max(range(3), key=lambda e: (records[e]["ema_val_acc1"], -e))
    assert best["parts"]["checkpoints"]["best_epoch"] == best_epoch  # best.pt follows the EMA weights
    assert objective_value(summary, "best_val_acc1", ema=True) == summary["best_ema_val_acc1"]

    assert main(["eval", f"checkpoint={run / 'last.pt'}", "weights=ema", "fgsm_eps=[]",
                 f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["clean"]["acc1"] == records[-1]["ema_val_acc1"] and report["weights"] == "ema"


# --------------------------------------------------------------------------- checkpoints and schedules


def test_keep_best_keeps_the_k_best_epochs(data_root, tmp_path):
    run = tmp_path / "run"
    fit(make_config(*folder(data_root), "trainer.epochs=4", "trainer.keep_best=2", "optim.lr=0.05"), run)
    records = metrics(run)
    ranked = sorted(range(4), key=lambda e: -records[e]["val_acc1"])  # stable: the earlier epoch wins a tie
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == sorted(f"epoch-{e:03d}.pt" for e in ranked[:2])
    assert checkpoint.load(run / "best.pt")["parts"]["checkpoints"]["best_epoch"] == ranked[0]


def test_lr_steps_per_epoch_and_scales_from_a_base_batch(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    fit(make_config(*folder(data_root), "trainer.epochs=3", "sched.step_on=epoch", "optim.lr=0.1",
                    "optim.lr_base_batch=4"), run)
    lrs = [r["lr"] for r in metrics(run)]
    base = 0.1 * 8 / 4
    assert lrs == pytest.approx([base, base * 0.75, base * 0.25])  # cosine over 3 epochs, one value per epoch
    assert "lr 0.2 (optim.lr 0.1 x 8/4)" in capsys.readouterr().out


# --------------------------------------------------------------------------- random erasing, repeated augmentation


def erased_masks(images_before, images_after):
    return (images_before != images_after).any(1)  # [B, H, W]


def test_random_erasing_follows_timms_rule_per_sample_and_per_box():
    from timm.data.random_erasing import RandomErasing as TimmErasing

    from mixtrain.data.erasing import RandomErasing

    n, size = 3000, 32
    before = torch.full((n, 3, size, size), 5.0)
    ours = erased_masks(before, RandomErasing(0.25, "const", seed=1)(before.clone(), epoch=0, step=0))
    import random
    random.seed(0)
    timm = erased_masks(before, TimmErasing(0.25, mode="const", device="cpu")(before.clone()))
    for masks in (ours, timm):
        erased = masks.flatten(1).any(1)
        assert abs(erased.float().mean().item() - 0.25) < 0.025  # 3 sigma of 3,000 draws
    areas = {name: m.flatten(1).sum(1)[m.flatten(1).any(1)].double() / size**2 for name, m in (("ours", ours), ("timm", timm))}
    assert 0.01 < areas["ours"].min() and areas["ours"].max() < 0.4
    assert abs(areas["ours"].mean() - areas["timm"].mean()) < 0.01  # same box rule
    for mask in ours[ours.flatten(1).any(1)][:200]:  # each erased region is one rectangle
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_random_erasing_fills_and_is_reproducible():
    from mixtrain.data.erasing import RandomErasing

    before = torch.zeros(400, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    erase = RandomErasing(1.0, "pixel", count=2, seed=3)
    a, b = erase(before.clone(), epoch=2, step=5), erase(before.clone(), epoch=2, step=5)
    assert torch.equal(a, b) and not torch.equal(a, erase(before.clone(), epoch=2, step=6))
    assert a.is_contiguous(memory_format=torch.channels_last)
    values = a[a != 0]
    assert abs(values.mean().item()) < 0.05 and abs(values.std().item() - 1) < 0.05  # normal noise
    assert (a != 0).flatten(1).any(1).all()  # probability 1: every image


def test_repeated_augmentation_is_timms_repeat_aug_sampler():
    from timm.data.distributed_sampler import RepeatAugSampler

    from mixtrain.data.sampling import epoch_positions, repeated

    for size, world in ((20, 1), (300, 1), (300, 2), (1000, 3)):
        for rank in range(world):
            theirs = RepeatAugSampler(list(range(size)), num_replicas=world, rank=rank, shuffle=False, num_repeats=3)
            ours = repeated(torch.arange(size), 3)[epoch_positions(size, 3, rank, world)]
            assert ours.tolist() == list(theirs), (size, world, rank)


def test_repeated_copies_share_a_batch_with_their_own_augmentation():
    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 3, 8, 8).contiguous() * 20
    images[:, :, :, :4] += 1  # left and right halves differ, so a flip shows
    loader = DeviceLoader(images, torch.arange(12), [0.0] * 3, [1.0] * 3, train=True, options=LoaderOptions(6), padding=2, repeats=3)
    assert len(loader) == 2  # the epoch keeps the dataset's length
    for x, y in loader:
        ids, counts = y.unique(return_counts=True)
        assert counts.tolist() == [3, 3] and torch.equal(y.view(2, 3), y.view(2, 3)[:, :1].expand(2, 3))
        copies = x.view(2, 3, *x.shape[1:])
        assert not all(torch.equal(copies[i, 0], copies[i, 1]) and torch.equal(copies[i, 1], copies[i, 2])
                       for i in range(2))  # crops / flips of their own


@pytest.mark.parametrize("cache", [True, False])
def test_erasing_and_repeats_train_on_both_paths(data_root, tmp_path, cache):
    args = [*folder(data_root), f"dataset.cache={str(cache).lower()}", "dataset.random_erasing=0.5",
            "dataset.random_erasing_mode=rand", "dataset.repeated_aug=3", "trainer.batch_size=6"]
    summary = fit(make_config(*args), tmp_path / "run")
    assert summary["status"] == "completed" and len(make_config(*args).dataset.mean) == 3


def test_every_feature_from_the_command_line_on_the_bundled_data(tmp_path):
    from helpers import run_cli

    result = run_cli("train", "trainer.epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                     "trainer.amp=false", "trainer.ema.enabled=true", "trainer.ema.warmup=true", "trainer.accum_steps=2",
                     "trainer.clip_grad=agc", "trainer.clip_value=0.01", "dataset.random_erasing=0.25",
                     "dataset.repeated_aug=2", "trainer.keep_best=2", "sched.step_on=epoch",
                     "optim.lr_base_batch=256", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lr 0.05 (optim.lr 0.1 x 128/256)" in result.stdout and "EMA acc" in result.stdout
    assert len(list((tmp_path / "run").glob("epoch-*.pt"))) == 2


@pytest.mark.parametrize("override,message", [
    ("trainer.accum_steps=0", "trainer.accum_steps must be >= 1"),
    ("trainer.accum_steps=200", "trainer.accum_steps must be <= trainer.batch_size (128)"),
    ("trainer.clip_grad=l2", "trainer.clip_grad must be one of norm, value, agc"),
    ("trainer.ema.decay=1.5", "trainer.ema.decay must be in (0, 1)"),
    ("dataset.random_erasing=2", "dataset.random_erasing must be a probability in [0, 1]"),
    ("dataset.repeated_aug=0", "dataset.repeated_aug must be >= 1"),
    ("sched.step_on=batch", "sched.step_on must be one of update, epoch"),
    ("trainer.amp=maybe", "trainer.amp must be auto, true or false"),
    ("trainer.keep_best=0", "trainer.keep_best must be >= 1"),
])
def test_new_keys_are_validated_in_one_line(override, message, capsys, tmp_path):
    assert main(["train", override, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_manifold_mixup_refuses_accumulation():
    from mixtrain.errors import MixtrainError

    with pytest.raises(MixtrainError, match="trainer.accum_steps must be 1 with augment=manifold"):
        make_config("augment=manifold", "trainer.accum_steps=2")
