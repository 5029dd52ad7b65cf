"""After training: calibrate, predict and export (issue 13)."""

import csv
import json
import shutil

import pytest
import torch
from helpers import TINY, make_config, make_image_folder

from mixtrain import load_model
from mixtrain.artifacts.calibration import calibration_path, sha256_of
from mixtrain.cli import main
from mixtrain.data import LoaderOptions, open_split
from mixtrain.evaluate.evaluation import logits_of as eval_predict
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A streaming-folder ResNet-20 trained 2 epochs, calibrated by `mixtrain eval calibrate=true`."""
    root = tmp_path_factory.mktemp("use")
    make_image_folder(root / "data", per_class=12, val_per_class=5, size=20)
    fit(make_config("dataset=imagefolder", f"dataset.root={root / 'data'}", "dataset.image_size=16", *TINY,
                    "trainer.epochs=2", "optim.lr=0.05"), root / "run")
    assert main(["eval", f"checkpoint={root / 'run' / 'last.pt'}", "calibrate=true", "fgsm_eps=[]", "bootstrap=0",
                 f"hydra.run.dir={root / 'ev'}"]) == 0
    return root


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_calibrate_stores_the_temperature_with_the_model(run):
    saved = json.loads(calibration_path(run / "run" / "last.pt").read_text())
    assert calibration_path(run / "run" / "last.pt").name == "last.calibration.json"
    report = json.loads((run / "ev" / "eval.json").read_text())
    assert saved["temperature"] == report["temperature"]["value"] and "val images" in saved["fit_on"]
    assert saved["ece_before"] == report["temperature"]["before"]["ece"]
    assert saved["ece_after"] == report["temperature"]["after"]["ece"]
    assert saved["checkpoint_sha256"] == sha256_of(run / "run" / "last.pt")
    loaded = load_model(run / "run" / "last.pt")
    assert not loaded.model.training and loaded.temperature == saved["temperature"]
    assert loaded.classes == ["ant", "bee", "cat"]


def test_predict_uses_the_eval_transform_and_the_stored_temperature(run, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["predict", f"checkpoint={run / 'run' / 'last.pt'}", f"inputs={run / 'data' / 'val'}", f"out={out}",
                 "topk=2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    loaded = load_model(run / "run" / "last.pt")
    assert f"temperature T={loaded.temperature:.4f} (calibrated" in first
    rows = read_rows(out)
    assert len(rows) == 15 and list(rows[0]) == ["path", "class1", "prob1", "class2", "prob2"]
    # The same tensors as evaluation: eval's logits, scaled by T, give predict's probabilities.
    cfg = loaded.config
    val = open_split(cfg.dataset, "val", False, LoaderOptions(8))
    logits, _ = eval_predict(loaded.model, val.loader)
    probs = (logits / loaded.temperature).softmax(1)
    for row, p in zip(rows, probs):
        assert row["class1"] == loaded.classes[int(p.argmax())]
        assert float(row["prob1"]) == pytest.approx(float(p.max()), abs=1e-5)


def test_predict_streams_lists_unreadable_files_and_writes_jsonl(run, tmp_path, capsys):
    images = tmp_path / "in" / "deep" / "er"
    images.mkdir(parents=True)
    for src in sorted((run / "data" / "val" / "bee").iterdir())[:3]:
        shutil.copy(src, images / src.name)
    (images / "broken.png").write_bytes(b"not a png")
    (tmp_path / "in" / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "p.jsonl"
    assert main(["predict", f"checkpoint={run / 'run'}", f"inputs={tmp_path / 'in'}", f"out={out}", "tta=flip",
                 "calibrated=false", "batch_size=2", "num_workers=1"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 and all(len(x["classes"]) == 3 for x in lines)
    errors = read_rows(tmp_path / "p_errors.csv")
    assert [e["path"] for e in errors] == [str(images / "broken.png")] and errors[0]["reason"]
    text = capsys.readouterr().out
    assert "T=1.0000 (raw softmax)" in text and "classified 3 of 4 images" in text and "1 unreadable" in text
    # the text-file and glob forms of `inputs`
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(images.glob("*.png"))))
    assert main(["predict", f"checkpoint={run / 'run'}", f"inputs={listing}", f"out={tmp_path / 'a.csv'}"]) == 0
    assert main(["predict", f"checkpoint={run / 'run'}", f"inputs={images}/0*.png", f"out={tmp_path / 'b.csv'}"]) == 0
    assert len(read_rows(tmp_path / "a.csv")) == 3 and len(read_rows(tmp_path / "b.csv")) == 3


def test_tta_flip_averages_the_image_and_its_mirror(run):
    loaded = load_model(run / "run")
    x = loaded.preprocess(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    both = loaded.probabilities(x, calibrated=False, tta="flip")
    plain, mirror = (loaded.probabilities(v, calibrated=False) for v in (x, x.flip(-1)))
    torch.testing.assert_close(both, (plain + mirror) / 2)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch(run, tmp_path, fmt, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    assert main(["export", f"checkpoint={run / 'run'}", f"format={fmt}", f"out={tmp_path / fmt}"]) == 0
    out = capsys.readouterr().out
    assert "max abs difference to PyTorch" in out
    config = json.loads((tmp_path / fmt / "config.json").read_text())
    assert config["label_names"] == ["ant", "bee", "cat"] and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    if fmt == "torchscript":  # loads with plain torch, no mixtrain
        loaded = load_model(run / "run")
        x = loaded.preprocess(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8))
        torch.testing.assert_close(torch.jit.load(str(tmp_path / fmt / "model.pt"))(x), loaded.model(x),
                                   atol=1e-5, rtol=1e-5)


def test_safetensors_export_of_a_timm_model_loads_back_in_timm(tmp_path):
    import timm

    make_image_folder(tmp_path / "data", per_class=4, val_per_class=2, size=32)
    fit(make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                    "dataset.image_size=32", "model=timm", "model.name=test_resnet", *TINY), tmp_path / "run")
    assert main(["export", f"checkpoint={tmp_path / 'run'}", "format=safetensors"]) == 0
    out = tmp_path / "run" / "export-safetensors"
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    model = timm.create_model("test_resnet", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=3)).eval()
    loaded = load_model(tmp_path / "run")
    x = loaded.preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), loaded.model(x), atol=1e-5, rtol=1e-5)
    assert main(["export", f"checkpoint={tmp_path / 'run'}", "format=safetensors"]) == 2  # no overwrite


@pytest.mark.parametrize("args,message", [
    (["predict", "checkpoint={junk}", "inputs={data}"], "is not a readable mixtrain checkpoint"),
    (["predict", "checkpoint={run}", "inputs={missing}"], "does not exist: pass an image, a folder"),
    (["predict", "checkpoint={run}", "inputs={empty}"], "no images in"),
    (["export", "checkpoint={run}", "format=keras"], "format must be one of safetensors, onnx, torchscript"),
    (["predict", "inputs={data}"], "checkpoint is required"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, args, message, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "empty").mkdir()
    values = dict(junk=tmp_path / "junk.pt", data=run / "data" / "val", run=run / "run", missing=tmp_path / "nope",
                  empty=tmp_path / "empty")
    assert main([a.format(**values) for a in args] + [f"out={tmp_path / 'o.csv'}"]
                if args[0] == "predict" else [a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.csv").exists()


def test_predict_with_no_readable_input_exits_2_and_lists_them(run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "in" / name).write_bytes(b"not an image")
    assert main(["predict", f"checkpoint={run / 'run'}", f"inputs={tmp_path / 'in'}", f"out={tmp_path / 'o.csv'}"]) == 2
    assert "none of the 2 inputs could be read" in capsys.readouterr().err
    assert len(read_rows(tmp_path / "o_errors.csv")) == 2
