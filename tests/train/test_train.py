"""End-to-end runs of ``fit`` on tiny data made in the test."""

import json

import pytest
import torch
from helpers import TINY, make_cifar10_folder, make_config, make_image_folder

from mixtrain.artifacts import checkpoint
from mixtrain.errors import MixtrainError
from mixtrain.models import create_model
from mixtrain.runtime.precision import resolve_precision
from mixtrain.train.training import fit


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_run_outputs(run_dir, epochs):
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(epochs))
    for key in ("train_loss", "train_acc", "val_acc1", "val_acc5", "val_nll", "val_ece", "lr", "img_per_s"):
        assert key in records[-1]
    assert summary["status"] == "completed" and summary["epochs"] == epochs
    assert summary["final_val_acc1"] == records[-1]["val_acc1"]
    assert summary["best_val_acc1"] == max(r["val_acc1"] for r in records)
    assert 0 <= summary["final_val_ece"] <= 1 and summary["final_val_nll"] > 0
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    # Fixed costs in view: start-up (to the first batch) once, in the process's first record; each
    # epoch split into training and what is outside it (evaluation and its extras).
    assert records[0]["startup_time"] > 0 and all("startup_time" not in r for r in records[1:])
    for r in records:
        assert r["train_time"] > 0 and r["eval_time"] > 0
        assert r["train_time"] + r["eval_time"] == pytest.approx(r["epoch_time"])
    return summary, records


def test_one_epoch_on_a_cifar_format_folder(tmp_path, monkeypatch):
    make_cifar10_folder(tmp_path / "data", monkeypatch, n_train=40, n_test=21)
    cfg = make_config("dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.download=false", *TINY)
    fit(cfg, tmp_path / "run")
    check_run_outputs(tmp_path / "run", epochs=1)


@pytest.mark.parametrize("cache", [False, True])
def test_image_folder_run_learns_an_easy_task(tmp_path, cache):
    # Colour says the class: a working loop must get well above chance (33%) in a few epochs.
    make_image_folder(tmp_path / "data", per_class=24, val_per_class=8, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", f"dataset.cache={str(cache).lower()}",
                      "dataset.image_size=16", "dataset.scale=[0.5,1.0]", *TINY, "trainer.epochs=4",
                      "optim.lr=0.05", "sched.warmup_epochs=0")
    summary = fit(cfg, tmp_path / "run")
    check_run_outputs(tmp_path / "run", epochs=4)
    assert summary["best_val_acc1"] >= 75.0


def test_bf16_autocast_runs_on_cpu(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                      "dataset.image_size=16", *TINY, "trainer.amp=true", "trainer.amp_dtype=bf16")
    precision = resolve_precision(cfg.trainer, torch.device("cpu"))
    assert precision.dtype == torch.bfloat16 and not precision.scaler.is_enabled()
    model = create_model(cfg.model, num_classes=3)
    with precision.autocast():
        assert model(torch.randn(2, 3, 16, 16)).dtype == torch.bfloat16
    summary = fit(cfg, tmp_path / "run")
    assert summary["final_train_loss"] == summary["final_train_loss"]  # finite, not NaN


def test_precision_defaults_and_fp16_on_cpu(monkeypatch):
    import mixtrain.runtime.precision as precision

    cfg = make_config(*TINY)
    assert resolve_precision(cfg.trainer, torch.device("cpu")).dtype is None  # amp=false
    auto = make_config(*TINY, "trainer.amp=auto").trainer
    assert make_config().trainer.amp == "auto"
    for native, dtype in ((True, torch.bfloat16), (False, None)):  # bf16 only where the CPU has it natively
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        chosen = resolve_precision(auto, torch.device("cpu"))
        assert chosen.dtype == dtype and chosen.warning is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    asked = resolve_precision(make_config(*TINY, "trainer.amp=true", "trainer.amp_dtype=bf16").trainer,
                              torch.device("cpu"))
    assert asked.dtype == torch.bfloat16 and "about 20x slower than fp32" in asked.warning
    cfg = make_config(*TINY, "trainer.amp=true", "trainer.amp_dtype=fp16")
    with pytest.raises(MixtrainError, match="amp_dtype=bf16"):
        resolve_precision(cfg.trainer, torch.device("cpu"))


class Crash(Exception):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    base = ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true", "dataset.image_size=16",
            *TINY, "trainer.epochs=3"]
    fit(make_config(*base), tmp_path / "straight")

    from mixtrain.train.engine import Trainer
    real = Trainer.train_epoch

    def crash_in_epoch_2(self, epoch):
        if epoch == 2:
            raise Crash()
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_2)
    with pytest.raises(Crash):
        fit(make_config(*base), tmp_path / "crashed")
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert len(read_metrics(tmp_path / "crashed")) == 2
    fit(make_config(*base, f"resume={tmp_path / 'crashed'}"), tmp_path / "crashed")

    straight, resumed = (checkpoint.load(tmp_path / d / "last.pt") for d in ("straight", "crashed"))
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "crashed")
    assert [r["epoch"] for r in b] == [0, 1, 2]
    assert [r["val_acc1"] for r in a] == [r["val_acc1"] for r in b]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_run_dir_with_a_run_is_never_overwritten(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                      "dataset.image_size=16", *TINY)
    fit(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(MixtrainError, match="already holds a run"):
        fit(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("overrides", [
    [], ["dataset=cifar100", "model=wrn28_10", "augment=switch", "optim=adamw", "sched=multistep"],
    ["dataset=imagefolder", "dataset.root=/x", "augment=manifold", "model=preact_resnet18"],
    ["model=timm", "model.name=resnet18", "augment=cutmix", "augment.minmax=[0.2,0.8]"],
])
def test_saved_config_round_trips(overrides):
    from mixtrain.config import asdict, config_from_dict

    cfg = make_config(*overrides)
    assert config_from_dict(asdict(cfg), "the saved config") == cfg
