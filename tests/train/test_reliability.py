"""Reliability: exact resume after SIGKILL, clean stops, non-finite losses, checkpoints, bad images."""

import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SLOW, TINY, folder_args, make_config, make_image_folder, position, run_cli, start, wait_until_inside
from PIL import Image

from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.checkpoint import EpochProgress
from mixtrain.data import build_data
from mixtrain.errors import MixtrainError, RunStopped
from mixtrain.mixing import Mixer, MixupConfig
from mixtrain.runtime.precision import Precision
from mixtrain.train.engine import Step, Tally, train_step
from mixtrain.train.monitor import reconcile_metrics
from mixtrain.train.training import fit


def final_weights(run: Path) -> dict:
    return checkpoint.load(run / "last.pt")["model"]


def read_metrics(run: Path) -> list:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("slow"), per_class=40, val_per_class=4, size=16)


@pytest.fixture(scope="module")
def straight_run(slow_data, tmp_path_factory):
    """The reference: the same run, never interrupted."""
    work = tmp_path_factory.mktemp("straight")
    proc = start([*folder_args(slow_data), *SLOW, f"hydra.run.dir={work / 'run'}"], work)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return work / "run"


# --------------------------------------------------------------------------- exact resume


def test_sigkill_mid_epoch_then_resume_is_bit_identical(slow_data, straight_run, tmp_path):
    run = tmp_path / "run"
    proc = start([*folder_args(slow_data), *SLOW, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch, step = position(run)
    assert epoch == 1 and 0 < step < 30, "the kill should land inside epoch 1"
    assert len(read_metrics(run)) == 1
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # what a hard kill leaves

    resumed = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(final_weights(straight_run), final_weights(run))
    straight_metrics, resumed_metrics = read_metrics(straight_run), read_metrics(run)
    assert [r["epoch"] for r in resumed_metrics] == [0, 1, 2]  # appended, no epoch twice
    for key in ("train_loss", "train_acc", "val_acc1", "val_nll", "val_ece"):
        assert [r[key] for r in straight_metrics] == [r[key] for r in resumed_metrics], key
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_sigterm_stops_with_a_mid_epoch_checkpoint_that_resumes_exactly(slow_data, straight_run, tmp_path):
    run = tmp_path / "run"
    proc = start([*folder_args(slow_data), *SLOW, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mixtrain: stopped by SIGTERM at epoch 1, step ")
    assert f"mixtrain train resume={run}" in lines[0] and "Traceback" not in stderr
    epoch, step = position(run)
    assert epoch == 1 and 0 < step < 30 and f"step {step};" in lines[0]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"

    resumed = run_cli("train", f"resume={run / 'last.pt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(final_weights(straight_run), final_weights(run))
    assert (run / ".hydra" / "overrides.yaml").is_file()  # the original run's Hydra files stay
    assert list((run / ".hydra").glob("resume-*/overrides.yaml"))


# The streaming path with decoding workers and timm's RandAugment (which draws from Python's
# `random` and NumPy): every sample's augmentation comes from its own seed, so a resumed run
# sees the same batches whatever its workers did before.
STREAMING = [*(a for a in SLOW if not a.startswith("trainer.num_workers")), "trainer.num_workers=2",
             "dataset.auto_augment=rand-m9-mstd0.5-inc1"]


def test_streaming_folder_with_workers_and_randaugment_resumes_bit_identical(slow_data, tmp_path):
    straight = tmp_path / "straight"
    proc = start([*folder_args(slow_data, cache=False), *STREAMING, f"hydra.run.dir={straight}"], tmp_path)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    run = tmp_path / "run"
    proc = start([*folder_args(slow_data, cache=False), *STREAMING, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch, step = position(run)
    assert epoch == 1 and 0 < step < 30, "the kill should land inside epoch 1"
    resumed = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(final_weights(straight), final_weights(run))
    assert [r["train_loss"] for r in read_metrics(straight)] == [r["train_loss"] for r in read_metrics(run)]


def test_sigint_exits_130(slow_data, tmp_path):
    run = tmp_path / "run"
    proc = start([*folder_args(slow_data), *SLOW, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc, epoch=0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped by SIGINT" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------- non-finite losses


class NaNAt:
    """A soft-target CE that returns NaN at chosen (epoch, step) pairs."""

    def __init__(self, at):
        self.at, self.calls = set(at), 0
        self.epoch_steps = None

    def __call__(self, logits, targets):
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        step = self.calls
        self.calls += 1
        return loss * float("nan") if step in self.at else loss


def test_skip_leaves_the_weights_of_a_non_finite_step_untouched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    images = torch.randint(0, 255, (12, 3, 4, 4), dtype=torch.uint8)
    from mixtrain.data.device_loader import DeviceLoader
    from mixtrain.data.source import LoaderOptions
    loader = DeviceLoader(images, torch.arange(12) % 3, [0.5] * 3, [0.25] * 3, train=True, options=LoaderOptions(4), padding=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision("cpu", None, torch.amp.GradScaler("cpu", enabled=False))
    step = Step(opt, precision, Mixer(MixupConfig(alpha=0.0), 3, 1), NaNAt({1}))
    tally, snapshots = Tally(EpochProgress(), torch.device("cpu")), []
    for i, (x, y) in enumerate(loader):
        out = train_step(model, x, y, 0, step)  # the guard acts on the device; nothing is read here
        tally.add(out, len(y), i)
        snapshots.append([p.detach().clone() for p in model.parameters()])
    stats = tally.read()
    assert stats["skipped"] == 1 and stats["first_bad"] == 1 and stats["last_bad"] == 1
    for before, after_skip in zip(snapshots[0], snapshots[1]):
        assert torch.equal(before, after_skip)  # the NaN step changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # the next one trains
    assert stats["loss_sum"] == stats["loss_sum"] and stats["seen"] == 8  # the NaN is not in the epoch's sums


def test_on_nan_stop_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    import mixtrain.train.training as engine
    monkeypatch.setattr(engine, "create_loss", lambda cfg: NaNAt({8}))  # 6 steps per epoch: epoch 1, step 2
    cfg = make_config(*folder_args(tmp_path / "data"), "dataset.image_size=16", *TINY, "trainer.epochs=3",
                      "trainer.batch_size=4")
    with pytest.raises(RunStopped, match=r"non-finite loss at epoch 1 step 2 \(trainer.on_nan=stop\)") as info:
        fit(cfg, tmp_path / "run")
    assert info.value.exit_code == 1 and "last good checkpoint" in str(info.value)
    assert checkpoint.load(tmp_path / "run" / "last.pt")["state"]["epoch"] == 1  # end of epoch 0, kept
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "epoch 1 step 2" in summary["error"]


def test_on_nan_skip_stops_after_too_many(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    import mixtrain.train.training as engine
    monkeypatch.setattr(engine, "create_loss", lambda cfg: NaNAt({1, 2, 4}))
    cfg = make_config(*folder_args(tmp_path / "data"), "dataset.image_size=16", *TINY, "trainer.batch_size=4",
                      "trainer.on_nan=skip", "trainer.nan_skip_limit=2")
    with pytest.raises(RunStopped, match="more than trainer.nan_skip_limit=2 non-finite losses"):
        fit(cfg, tmp_path / "run")
    monkeypatch.setattr(engine, "create_loss", lambda cfg: NaNAt({1}))
    summary = fit(make_config(*folder_args(tmp_path / "data"), "dataset.image_size=16", *TINY,
                              "trainer.batch_size=4", "trainer.on_nan=skip"), tmp_path / "run2")
    assert summary["status"] == "completed" and summary["nan_skips"] == 1


# --------------------------------------------------------------------------- checkpoint files


def test_a_crash_while_saving_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"value": torch.tensor([1.0])}, path)

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"value": torch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"format": checkpoint.FORMAT, "model": Exploit()}, f, protocol=2)
    with pytest.raises(MixtrainError, match="not a readable mixtrain checkpoint"):
        checkpoint.load(bad)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "garbage", "foreign"])
def test_bad_checkpoint_files_are_one_line_errors(kind, tmp_path):
    path = tmp_path / "last.pt"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "foreign":
        torch.save({"state_dict": {}}, path)
    result = run_cli("train", f"resume={path}", cwd=tmp_path)
    assert result.returncode == 2
    expected = {"missing": "no checkpoint at", "garbage": "is not a readable mixtrain checkpoint",
                "foreign": "is not a mixtrain checkpoint"}[kind]
    assert result.stderr.startswith("mixtrain: error: ") and expected in result.stderr
    assert result.stderr.count("\n") == 1


def test_resume_with_another_model_names_the_difference(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    run = tmp_path / "run"
    first = run_cli("train", *folder_args(tmp_path / "data"), "dataset.image_size=16", *TINY,
                    f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    result = run_cli("train", f"resume={run}", "model=resnet56", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"mixtrain: error: cannot resume {run / 'last.pt'}: model.name is 'resnet56' "
                                     "but the checkpoint has 'resnet20' (the run dir's .hydra/overrides.yaml and this "
                                     "command line make the config): drop that override (or restore overrides.yaml), "
                                     "or start a new run")


def test_weights_of_another_model_are_refused(tmp_path):
    model = torch.nn.Linear(2, 3)
    other = torch.nn.Linear(4, 3)
    saved = {"model": other.state_dict()}
    with pytest.raises(MixtrainError, match="do not fit this model"):
        checkpoint.restore(saved, {"model": model}, None)


def test_metrics_file_matches_the_checkpoint_and_nothing_is_lost(tmp_path):
    path = tmp_path / "metrics.jsonl"
    history = [{"epoch": 0, "val_acc1": 10.0}, {"epoch": 1, "val_acc1": 20.0}]
    path.write_text(json.dumps(history[0]) + "\n")  # a crash between checkpoint and line
    reconcile_metrics(path, history)
    assert [json.loads(x) for x in path.read_text().splitlines()] == history
    path.write_text("".join(json.dumps(r) + "\n" for r in history + [{"epoch": 2, "val_acc1": 5.0}]))
    reconcile_metrics(path, history)  # resuming an older checkpoint
    assert [json.loads(x) for x in path.read_text().splitlines()] == history
    (kept,) = tmp_path.glob("metrics.jsonl.replaced-*")
    assert len(kept.read_text().splitlines()) == 3


# --------------------------------------------------------------------------- image files


def write_odd_images(root: Path, size: int = 16) -> None:
    """One class folder per odd kind of file, in train and val."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
    kinds = {
        "gray": lambda p: rgb.convert("L").save(p.with_suffix(".jpg")),
        "cmyk": lambda p: rgb.convert("CMYK").save(p.with_suffix(".jpg")),
        "palette": lambda p: rgb.convert("P").save(p.with_suffix(".png")),
        "rgba": lambda p: rgb.convert("RGBA").save(p.with_suffix(".png")),
        "tiny": lambda p: rgb.resize((5, 3)).save(p.with_suffix(".png")),
    }
    for split, n in (("train", 4), ("val", 2)):
        for name, write in kinds.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write(folder / f"{i}")


@pytest.mark.parametrize("cache", [True, False])
def test_grayscale_cmyk_palette_rgba_and_tiny_images_train_as_rgb(tmp_path, cache):
    write_odd_images(tmp_path / "data")
    cfg = make_config(*folder_args(tmp_path / "data", cache), "dataset.image_size=16", *TINY, "trainer.batch_size=4")
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    images, _ = next(iter(data.train))
    assert images.shape == (4, 3, 16, 16)
    assert data.unreadable() == []
    summary = fit(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["unreadable_images"] == 0


def corrupt_some(root: Path) -> list:
    bad = [root / "train" / "ant" / "0001.png", root / "train" / "bee" / "0002.png", root / "val" / "cat" / "0000.png"]
    bad[0].write_bytes(bad[0].read_bytes()[:40])  # truncated
    bad[1].write_bytes(b"this is not an image")  # garbage
    bad[2].write_bytes(bad[2].read_bytes()[:60])
    return [str(p) for p in bad]


@pytest.mark.parametrize("cache", [True, False])
def test_unreadable_images_are_skipped_with_one_warning(tmp_path, cache):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    bad = corrupt_some(tmp_path / "data")
    result = run_cli("train", *folder_args(tmp_path / "data", cache), "dataset.image_size=16", *TINY,
                     "trainer.epochs=2", "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "unreadable image" in line]
    assert len(warnings) == 1 and "(dataset.on_bad_image=skip)" in warnings[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    if cache:  # decoded up front: all three known at once, and left out of the data
        assert "skipping 3 unreadable" in warnings[0] and summary["unreadable_images"] == 3
    else:  # streamed: reported as they are met (the val one always is; train ones when drawn)
        assert 1 <= summary["unreadable_images"] <= 3
    assert any(path in result.stdout for path in bad)
    # Evaluation counts only readable images: 12 val files, 1 unreadable.
    cfg = make_config(*folder_args(tmp_path / "data", cache), "dataset.image_size=16", *TINY)
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    labels = torch.cat([y for _, y in data.val])
    assert int((labels >= 0).sum()) == 11


@pytest.mark.parametrize("cache", [True, False])
def test_on_bad_image_error_stops_before_training_with_the_list(tmp_path, cache):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    bad = corrupt_some(tmp_path / "data")
    result = run_cli("train", *folder_args(tmp_path / "data", cache), "dataset.image_size=16", *TINY,
                     "dataset.on_bad_image=error", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("mixtrain: error: 3 unreadable image(s) (dataset.on_bad_image=error): ")
    assert all(path in result.stderr for path in bad) and result.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
