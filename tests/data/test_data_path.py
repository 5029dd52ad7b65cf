"""One data path for training, eval and preview; eval, resume and logs that hold on real-world folders (issue 11)."""

import importlib
import json
import os

import numpy as np
import pytest
import torch
from helpers import TINY, make_config, make_image_folder, run_cli
from PIL import Image

from mixtrain.cli import main
from mixtrain.data import LoaderOptions, build_data, open_split, resolve_workers
from mixtrain.data.source import usable_cores
from mixtrain.errors import MixtrainError, RunStopped
from mixtrain.runtime.precision import Precision
from mixtrain.runtime.seeds import seed_everything
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def folder(root, cache, *extra):
    return ["dataset=imagefolder", f"dataset.root={root}", f"dataset.cache={str(cache).lower()}", *extra]


def read_json(path):
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- 1-3: one split factory


def test_eval_leaves_an_unreadable_val_image_out_of_every_metric(tmp_path, capsys):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=5, size=16, ext="jpg")
    bad = tmp_path / "data" / "val" / "bee" / "0002.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated JPEG
    fit(make_config(*folder(tmp_path / "data", False, "dataset.image_size=16"), *TINY), tmp_path / "run")
    assert main(["eval", f"checkpoint={tmp_path / 'run'}", "fgsm_eps=[0,8]", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    report = read_json(tmp_path / "ev" / "eval.json")
    assert report["dataset"]["samples"] == 14 and report["dataset"]["unreadable"] == 1
    assert report["temperature"]["fit_samples"] + report["temperature"]["report_samples"] == 14
    assert report["fgsm"][0]["acc1"] == report["clean"]["acc1"]
    out = capsys.readouterr().out
    assert out.count("left out 1 unreadable image(s)") == 1 and str(bad) in out

    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / 'cmp'), "fgsm_eps=[]"]) == 0
    assert read_json(tmp_path / "cmp" / "compare.json")["runs"][0]["report"]["dataset"]["samples"] == 14


def test_streaming_eval_batches_never_hold_a_stand_in(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=3, size=16)
    for name in ("0000.png", "0001.png", "0002.png"):  # a whole batch of unreadable files
        (tmp_path / "val" / "ant" / name).write_bytes(b"not an image")
    cfg = make_config(*folder(tmp_path, False, "dataset.image_size=16"), *TINY, "trainer.eval_batch_size=3")
    val = open_split(cfg.dataset, "val", False, LoaderOptions(3))
    labels = torch.cat([y for _, y in val.loader])
    assert sorted(labels.tolist()) == [1, 1, 1, 2, 2, 2] and len(val.loader.unreadable) == 3


@pytest.mark.parametrize("cache", [True, False])
def test_eval_top1_equals_the_runs_final_val_acc1_at_the_eval_size(tmp_path, cache):
    make_image_folder(tmp_path / "data", per_class=10, val_per_class=7, size=32)
    args = [*folder(tmp_path / "data", cache, "dataset.image_size=16", "dataset.eval_image_size=24"), *TINY,
            "trainer.epochs=2", "optim.lr=0.05"]
    summary = fit(make_config(*args), tmp_path / "run")
    cfg = make_config(*args)
    images, _ = next(iter(open_split(cfg.dataset, "val", False, LoaderOptions(4)).loader))
    assert images.shape[-2:] == (24, 24)  # evaluation reads at eval_image_size, in every command
    assert main(["eval", f"checkpoint={tmp_path / 'run' / 'last.pt'}", "fgsm_eps=[]",
                 f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    assert read_json(tmp_path / "ev" / "eval.json")["clean"]["acc1"] == summary["final_val_acc1"]


def test_every_command_opens_a_split_through_the_same_factory(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=3, size=20)
    cfg = make_config(*folder(tmp_path, False, "dataset.image_size=16", "dataset.eval_image_size=20"), *TINY)
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    direct = open_split(cfg.dataset, "val", False, LoaderOptions(cfg.trainer.eval_batch_size))
    for (a, y), (b, z) in zip(data.val, direct.loader):
        assert torch.equal(a, b) and torch.equal(y, z)
    with pytest.raises(ModuleNotFoundError):  # the second path is gone
        importlib.import_module("mixtrain.data.splits")


def test_randaugment_posterize_never_asks_pillow_for_zero_bits():
    from mixtrain.config.dataset import StreamedConfig
    from mixtrain.data.transforms import augment_ops, stream_transform

    image = Image.new("RGB", (16, 16), (200, 120, 40))
    # Magnitude 10 makes timm's PosterizeIncreasing keep 0 bits, which Pillow refuses mid-epoch.
    cfg = StreamedConfig(name="x", image_size=16, auto_augment="rand-m10-n3-inc1")
    cfg.resolve_preprocessing()
    transform = stream_transform(cfg, train=True)
    for _ in range(100):
        transform(image)
    posterize = next(op for op in augment_ops(transform) if op.name == "PosterizeIncreasing")
    assert set(np.asarray(posterize.aug_fn(image, 0)).ravel().tolist()) <= {0, 128}  # 1 bit kept


# --------------------------------------------------------------------------- 4: fp16's GradScaler and the NaN policy


class LossTimes:
    """Soft-target CE times a factor at chosen calls (inf or NaN): non-finite gradients there."""

    def __init__(self, at, factor):
        self.at, self.factor, self.calls = at, factor, 0

    def __call__(self, logits, targets):
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        hit = self.at is None or self.calls in self.at
        self.calls += 1
        return loss * self.factor if hit else loss


def scaler_precision(trainer, device):
    # The fp16 path on the CPU: a real GradScaler, enabled, over fp32 compute.
    return Precision("cpu", None, torch.amp.GradScaler("cpu", enabled=True))


def test_fp16_scaler_skips_are_counted_and_left_out_of_the_loss(tmp_path, monkeypatch):
    import mixtrain.train.training as engine

    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    monkeypatch.setattr(engine, "resolve_precision", scaler_precision)
    monkeypatch.setattr(engine, "create_loss", lambda cfg: LossTimes({1, 3}, float("nan")))
    summary = fit(make_config(*folder(tmp_path / "data", True, "dataset.image_size=16"), *TINY,
                              "trainer.batch_size=4"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["nan_skips"] == 2
    assert summary["final_train_loss"] == summary["final_train_loss"]  # the NaN steps are not in the mean


def test_fp16_run_that_keeps_skipping_stops_as_failed(tmp_path, monkeypatch):
    import mixtrain.train.training as engine

    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    monkeypatch.setattr(engine, "resolve_precision", scaler_precision)
    monkeypatch.setattr(engine, "create_loss", lambda cfg: LossTimes(None, float("inf")))
    cfg = make_config(*folder(tmp_path / "data", True, "dataset.image_size=16"), *TINY, "trainer.batch_size=4",
                      "trainer.nan_skip_limit=2", "trainer.epochs=2")
    with pytest.raises(RunStopped, match=r"skipped more than trainer.nan_skip_limit=2 steps in a row") as info:
        fit(cfg, tmp_path / "run")
    assert "\n" not in str(info.value) and "at epoch 0, step 2" in str(info.value)
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"


# --------------------------------------------------------------------------- 5: per-rank model randomness


def test_model_randomness_is_seeded_by_seed_and_rank():
    def mask(rank):
        seed_everything(3, rank)
        return torch.nn.functional.dropout(torch.ones(64), 0.5)

    assert torch.equal(mask(0), mask(0)) and not torch.equal(mask(0), mask(1))
    seed_everything(3, 0)
    assert torch.initial_seed() == 3  # one process: the seed as given


# --------------------------------------------------------------------------- 6: resume refuses changes of meaning


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_image_folder(root / "data", per_class=8, val_per_class=4, size=16)
    args = [*folder(root / "data", True, "dataset.image_size=16"), *TINY, "trainer.epochs=2"]
    cfg = make_config(*args)
    fit(cfg, root / "run")
    return root, args


@pytest.mark.parametrize("change,key", [
    ("trainer.batch_size=4", "trainer.batch_size"),
    ("augment=mixup", "augment.name"),
    ("optim.lr=0.3", "optim.lr"),
    ("sched=multistep", "sched.name"),
    ("seed=5", "seed"),
    ("dataset.label_noise=0.2", "dataset.label_noise"),
    ("dataset.crop_padding=2", "dataset.crop_padding"),
])
def test_resume_refuses_a_change_that_alters_the_run(one_epoch_run, change, key):
    root, args = one_epoch_run
    with pytest.raises(MixtrainError, match=rf"cannot resume .*: {key} is .* but the checkpoint has ") as info:
        fit(make_config(*args, change, f"resume={root / 'run'}"), root / "run")
    assert "\n" not in str(info.value)


def test_resume_may_extend_the_epochs_and_says_what_that_does(one_epoch_run, tmp_path, capsys):
    root, args = one_epoch_run
    import shutil

    shutil.copytree(root / "run", tmp_path / "run")
    with pytest.raises(MixtrainError, match="trainer.epochs may only grow"):
        fit(make_config(*args, "trainer.epochs=1", f"resume={tmp_path / 'run'}"), tmp_path / "run")
    summary = fit(make_config(*args, "trainer.epochs=3", "trainer.num_workers=2", f"resume={tmp_path / 'run'}"),
                  tmp_path / "run")
    assert summary["epochs"] == 3
    out = capsys.readouterr().out
    assert "trainer.epochs 2 -> 3: the cosine schedule now spans 3 epochs" in out and "here: lr " in out


# --------------------------------------------------------------------------- 8-9: what a run says


def test_plain_progress_lines_off_a_terminal_and_train_log_holds_the_terminal_lines(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    result = run_cli("train", *folder(tmp_path / "data", False, "dataset.image_size=16"), *TINY, "trainer.batch_size=4",
                     "trainer.log_every=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch 0 step ")]
    assert [line.split()[3] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all(" loss " in line and " img/s ETA " in line for line in lines)
    log = (tmp_path / "run" / "train.log").read_text()
    for line in result.stdout.splitlines():
        assert line.rstrip() in log, line
    assert not (tmp_path / "train.log").exists()  # no stray log in the working directory


def test_first_line_names_sizes_and_precision_and_upscaling_is_flagged(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    result = run_cli("train", *folder(tmp_path / "data", True, "dataset.image_size=32", "dataset.eval_image_size=24"),
                     *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "train 32 px / eval 24 px" in first and "cpu fp32" in first
    warnings = [line for line in result.stdout.splitlines() if "upscaled" in line]
    assert len(warnings) == 1 and "at most 16 px" in warnings[0] and "dataset.image_size=16" in warnings[0]


# --------------------------------------------------------------------------- 10: smaller ones


def test_a_run_dir_whose_first_epoch_crashed_is_not_overwritten(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"status": "failed"}')
    args = [*folder(tmp_path / "data", True, "dataset.image_size=16"), *TINY]
    with pytest.raises(MixtrainError, match="already holds a run"):
        fit(make_config(*args), tmp_path / "run")
    result = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["summary.json"]  # Hydra wrote nothing either


def test_a_refused_command_writes_nothing(tmp_path):
    result = run_cli("train", "dataset=imagefolder", f"dataset.root={tmp_path / 'missing'}", *TINY,
                     f"hydra.run.dir={tmp_path / 'out' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == []
    result = run_cli("train", "dataset=imagefolder", f"dataset.root={tmp_path / 'missing'}", *TINY, cwd=tmp_path)
    assert result.returncode == 2 and sorted(os.listdir(tmp_path)) == []  # default dir under outputs/ too


def test_one_atomic_writer_with_unique_temp_names(tmp_path, monkeypatch):
    from mixtrain import files

    names = []
    real = files.tempfile.mkstemp
    monkeypatch.setattr(files.tempfile, "mkstemp", lambda **kw: names.append(real(**kw)[1]) or (os.open(names[-1], os.O_WRONLY), names[-1]))
    files.write_json_atomic(tmp_path / "a.json", {"x": 1})
    files.write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert len(set(names)) == 2 and read_json(tmp_path / "a.json") == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_preview_of_manifold_mixup_says_it_has_no_picture(tmp_path, capsys):
    assert main(["preview", "augment=manifold", f"hydra.run.dir={tmp_path / 'p'}"]) == 2
    err = capsys.readouterr().err
    assert "augment=manifold mixes hidden features" in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_num_workers_defaults_to_the_usable_cores():
    assert make_config().trainer.num_workers == "auto"
    assert resolve_workers("auto") == min(8, usable_cores()) and resolve_workers(3) == 3
    for bad in ("-1", "many"):
        with pytest.raises(MixtrainError, match="trainer.num_workers must be auto or a count >= 0"):
            make_config(f"trainer.num_workers={bad}")
