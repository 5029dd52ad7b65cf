"""Fine-tuning: first weights from a file (model.pretrained_path), a new run from a run's weights
(init_from), freezing the backbone, gradient checkpointing, a model that suits the data by default."""

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY, compose_config, make_config, make_image_folder, run_cli
from safetensors.torch import save_file

from mixtrain.config import to_object
from mixtrain.errors import MixtrainError
from mixtrain.models import create_model
from mixtrain.train.training import Training, fit

FOLDER = ["dataset=imagefolder", "dataset.image_size=32", *TINY, "trainer.batch_size=4"]
TIMM = ["model=timm", "model.name=resnet18"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    make_image_folder(root / "three", classes=("ant", "bee", "cat"), per_class=4, val_per_class=2, size=32)
    make_image_folder(root / "four", classes=("ant", "bee", "cat", "dog"), per_class=4, val_per_class=2, size=32)
    return root


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    """A timm resnet18's weights with a 10-class classifier, as safetensors (as `mixtrain export` writes)."""
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()


# --------------------------------------------------------------------------- model.pretrained_path


def test_a_timm_model_starts_from_a_file_with_a_new_classifier_for_its_classes(photos, timm_file, tmp_path, caplog):
    path, weights = timm_file
    cfg = make_config(*FOLDER, f"dataset.root={photos / 'three'}", *TIMM, f"model.pretrained_path={path}")
    with caplog.at_level(logging.DEBUG):
        training = Training(cfg, tmp_path / "run")
    # timm's own lines of the load (the file read, the keys it could not place) are in the summary line
    # alone: they reach no handler of a Hydra app, which shows INFO on the terminal.
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("timm.models")]
    state = training.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights if not k.startswith("fc."))
    assert state["fc.weight"].shape == (3, 512)  # the classifier starts anew
    (line,) = training.weights_notes
    assert line.startswith(f"weights from {path}: ") and "a new classifier for 3 classes (the file's has 10)" in line
    assert "missing" not in line and "unexpected" not in line


def test_a_file_with_the_same_classes_keeps_its_classifier(tmp_path, timm_file):
    path, weights = timm_file
    notes = []
    model = create_model(make_config(*TIMM, f"model.pretrained_path={path}").model, 10, notes=notes)
    assert torch.equal(model.state_dict()["fc.weight"], weights["fc.weight"])
    assert "its classifier kept" in notes[0]


@pytest.mark.parametrize("form", ["pth", "mixtrain_checkpoint"])
def test_a_bundled_model_starts_from_a_pth_or_a_checkpoint(tmp_path, form):
    torch.manual_seed(2)
    source = create_model(make_config("model=resnet20").model, 10)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict() if form == "pth" else {"format": "x", "model": source.state_dict()}, path)
    notes = []
    model = create_model(make_config("model=resnet20", f"model.pretrained_path={path}").model, 4, notes=notes)
    want = source.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items() if not k.startswith("head.fc"))
    assert "a new classifier for 4 classes (the file's has 10)" in notes[0]


def test_a_mismatch_beyond_the_classifier_is_one_line_unless_strict_is_off(tmp_path, timm_file):
    _, weights = timm_file
    damaged = {k: v for k, v in weights.items() if k != "layer4.1.bn2.weight"}
    damaged["extra.weight"] = torch.zeros(3)
    path = tmp_path / "damaged.safetensors"
    save_file({k: v.contiguous() for k, v in damaged.items()}, str(path))
    with pytest.raises(MixtrainError, match=r"does not fit resnet18 beyond its classifier \(1 missing, 1 unexpected: "
                                            r"missing layer4.1.bn2.weight, unexpected extra.weight\): .*model.strict=false"):
        create_model(make_config(*TIMM, f"model.pretrained_path={path}").model, 3)
    notes = []
    model = create_model(make_config(*TIMM, f"model.pretrained_path={path}", "model.strict=false").model, 3, notes=notes)
    assert "missing 1 (layer4.1.bn2.weight)" in notes[0] and "unexpected 1 (extra.weight)" in notes[0]
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])
    other = tmp_path / "narrow.safetensors"
    save_file({**{k: v.contiguous() for k, v in weights.items()}, "layer1.0.conv1.weight": torch.zeros(32, 64, 3, 3)},
              str(other))
    with pytest.raises(MixtrainError, match="was saved from another architecture or size than resnet18 "
                                            r"\(layer1.0.conv1.weight: "):
        create_model(make_config(*TIMM, f"model.pretrained_path={other}").model, 3)


class Planted:
    def __reduce__(self):
        return (os.system, (f"touch {PLANTED}",))


PLANTED = Path("/tmp/mixtrain-planted-by-a-weights-file")


def test_a_weights_file_never_runs_code(tmp_path):
    PLANTED.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": Planted()}, f)
    with pytest.raises(MixtrainError, match="is not a readable weights file"):
        create_model(make_config("model=resnet20", f"model.pretrained_path={path}").model, 3)
    assert not PLANTED.exists()
    with pytest.raises(MixtrainError, match="is not a file"):
        create_model(make_config("model=resnet20", f"model.pretrained_path={tmp_path / 'nope.pth'}").model, 3)


def test_after_the_weights_file_moves_resume_eval_predict_and_export_need_it_no_more(photos, timm_file, tmp_path):
    path = tmp_path / "weights.safetensors"
    shutil.copy(timm_file[0], path)
    run = tmp_path / "run"
    first = run_cli("train", *FOLDER, f"dataset.root={photos / 'three'}", *TIMM, f"model.pretrained_path={path}",
                    f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "a new classifier for 3 classes" in first.stdout
    path.rename(tmp_path / "moved.safetensors")
    resumed = run_cli("train", f"resume={run}", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    for command in (["eval", f"checkpoint={run}"], ["predict", f"checkpoint={run}",
                                                      f"inputs={photos / 'three' / 'val'}", f"out={tmp_path / 'p.csv'}"],
                    ["export", f"checkpoint={run}", "format=safetensors"]):
        done = run_cli(*command, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)


def test_pretrained_offline_fails_at_once_naming_pretrained_path(tmp_path, monkeypatch):
    import huggingface_hub

    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th")}
    done = run_cli("train", *TIMM, "model.pretrained=true", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert "model.pretrained=true needs resnet18's weights from http://127.0.0.1:9" in line
    assert "model.pretrained_path=FILE" in line
    # In process (no start-up in the figure): refused in one connection attempt, not after the hub client's
    # minute of retries (20 of them, 65 s, before).
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(MixtrainError, match="which does not answer"):
        create_model(make_config(*TIMM, "model.pretrained=true").model, 3)
    assert time.monotonic() - start < 20


# --------------------------------------------------------------------------- init_from


def digest_tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source_run(photos, tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "run"
    fit(make_config(*FOLDER, f"dataset.root={photos / 'three'}", *TIMM, "trainer.ema.enabled=true"), run)
    return run


def test_init_from_starts_a_new_run_from_a_runs_weights_and_leaves_it_as_it_was(photos, source_run, tmp_path):
    before = digest_tree(source_run)
    new = tmp_path / "new"
    result = run_cli("train", *FOLDER, f"dataset.root={photos / 'four'}", *TIMM, f"init_from={source_run}",
                     "trainer.epochs=1", "model.freeze=backbone", f"hydra.run.dir={new}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert digest_tree(source_run) == before  # the source run, byte for byte
    summary = json.loads((new / "summary.json").read_text())
    best = source_run / "best.pt"
    assert summary["init_from"] == {"path": str(best.resolve()), "sha256": hashlib.sha256(best.read_bytes()).hexdigest(),
                                    "weights": "raw", "classifier": "new"}
    assert "init_from " in result.stdout and "with a new classifier" in result.stdout
    assert summary["epochs"] == 1 and summary["num_classes"] == 4  # epochs, optimizer and schedule anew
    # The backbone frozen (its BatchNorm statistics too): its weights are the source's.
    src = torch.load(best, weights_only=True)["model"]
    got = torch.load(new / "last.pt", weights_only=True)["model"]
    assert torch.equal(got["conv1.weight"], src["conv1.weight"]) and got["fc.weight"].shape == (4, 512)


def test_init_from_refuses_another_model_or_missing_ema(photos, source_run, tmp_path):
    with pytest.raises(MixtrainError, match=r"holds a resnet18 and this run builds a resnet20: set the model it was "
                                            r"trained with \(model.name=resnet18\)"):
        Training(make_config(*FOLDER, f"dataset.root={photos / 'four'}", "model=resnet20", f"init_from={source_run}"),
                 tmp_path / "a")
    plain = tmp_path / "plain"
    fit(make_config(*FOLDER, f"dataset.root={photos / 'three'}", "model=resnet20"), plain)
    with pytest.raises(MixtrainError, match="holds no EMA weights"):
        Training(make_config(*FOLDER, f"dataset.root={photos / 'four'}", "model=resnet20", f"init_from={plain}",
                             "init_from_ema=true"), tmp_path / "b")
    with pytest.raises(MixtrainError, match="init_from starts a new run and resume continues one"):
        make_config(f"init_from={plain}", f"resume={plain}")


def test_init_from_ema_takes_the_ema_weights(photos, source_run, tmp_path):
    training = Training(make_config(*FOLDER, f"dataset.root={photos / 'three'}", *TIMM, f"init_from={source_run}",
                                    "init_from_ema=true"), tmp_path / "run")
    ema = torch.load(source_run / "best.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in training.model.state_dict().items())  # same classes: head kept
    assert training.init_source["weights"] == "ema" and training.init_source["classifier"] == "kept"


# --------------------------------------------------------------------------- freeze, grad checkpointing


def test_a_frozen_backbone_and_its_batchnorm_statistics_hold_still_then_train(photos, tmp_path):
    cfg = make_config(*FOLDER, f"dataset.root={photos / 'three'}", "model=resnet20", "model.freeze=backbone",
                      "model.freeze_epochs=1", "trainer.epochs=2", "trainer.checkpoint=true")
    training = Training(cfg, tmp_path / "run")
    start = {k: v.clone() for k, v in training.model.state_dict().items()}
    after_first = {}

    class Snapshot:
        name = ""

        def __getattr__(self, event):
            return lambda *a: None

        def eval_end(self, trainer, record):
            if trainer.state.epoch == 1:
                after_first.update({k: v.clone() for k, v in training.model.state_dict().items()})

    training.parts.all.append(Snapshot())
    training.train()
    backbone = [k for k in start if not k.startswith("head.fc")]
    assert all(torch.equal(after_first[k], start[k]) for k in backbone)  # weights and running statistics
    assert not torch.equal(after_first["head.fc.weight"], start["head.fc.weight"])
    end = training.model.state_dict()
    assert not torch.equal(end["stem.0.weight"], start["stem.0.weight"])  # unfrozen in epoch 1
    assert not torch.equal(end["stem.1.running_mean"], start["stem.1.running_mean"])
    assert all(p.requires_grad for p in training.model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_model(make_config("model=resnet20").model, 4)
    checked = create_model(make_config("model=resnet20", "model.grad_checkpointing=true").model, 4)
    checked.load_state_dict(plain.state_dict())
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    for model in (plain, checked):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), checked.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert checked.grad_checkpointing and not plain.grad_checkpointing
    assert create_model(make_config(*TIMM, "model.grad_checkpointing=true").model, 4).grad_checkpointing  # timm's own


# --------------------------------------------------------------------------- defaults that fit, custom kwargs


def test_a_folder_of_photos_gets_a_model_that_suits_its_size(photos):
    cfg = make_config("dataset=imagefolder", f"dataset.root={photos}")
    assert (type(cfg.model).__name__, cfg.model.name, cfg.dataset.image_size) == ("TimmModelConfig", "resnet18", 224)
    assert "model=auto" in cfg.model.chosen_by
    assert make_config().model.name == "resnet20"  # 32 px data: the bundled ResNet-20
    assert make_config("dataset=imagefolder", f"dataset.root={photos}", "dataset.image_size=32").model.name == "resnet20"


def test_a_cifar_model_on_photos_gets_one_warning_with_the_fix(photos, tmp_path):
    result = run_cli("train", "dataset=imagefolder", f"dataset.root={photos / 'three'}", "dataset.image_size=96",
                     "model=resnet20", *TINY, "trainer.batch_size=4", "trainer.limit_train_batches=1",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warned = [line for line in (result.stdout + result.stderr).splitlines() if "built for 32 px images" in line]
    assert len(warned) == 1 and "model=auto" in warned[0] and "9x the memory" in warned[0]


def test_custom_model_kwargs_take_a_dict_or_keys_without_plus():
    cfg = to_object(compose_config("model=custom", "model._target_=torchvision.models.SqueezeNet",
                                   "model.kwargs={version:'1_1',dropout:0.2}", "model.kwargs.dropout=0.3"))
    assert cfg.model.kwargs == {"version": "1_1", "dropout": 0.3}
    model = create_model(cfg.model, 5)
    assert model.num_classes == 5 and model.classifier[0].p == 0.3
