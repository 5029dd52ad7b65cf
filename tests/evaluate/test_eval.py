"""`mixtrain eval` and `mixtrain compare` on a checkpoint trained inside the test; the noisy-label recipes."""

import json
import shutil

import pytest
import torch
from helpers import TINY, compose_config, make_config, make_image_folder
from PIL import Image

from mixtrain.artifacts import checkpoint
from mixtrain.cli import main
from mixtrain.config import asdict, recipes_dir, to_object
from mixtrain.evaluate.evaluation import eval_dataset_config, eval_overrides
from mixtrain.mixing import MixupConfig
from mixtrain.runs.compare import best_marks
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of ResNet-20 on 3 colour classes with 25% label noise: (run dir, data dir, summary)."""
    root = tmp_path_factory.mktemp("eval")
    make_image_folder(root / "data", per_class=16, val_per_class=10, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={root / 'data'}", "dataset.cache=true",
                      "dataset.image_size=16", "dataset.label_noise=0.25", *TINY, "optim.lr=0.05")
    return root / "run", root / "data", fit(cfg, root / "run")


def read_eval(out_dir):
    return json.loads((out_dir / "eval.json").read_text())


def test_summary_records_the_label_noise(trained):
    _, _, summary = trained
    assert summary["label_noise"] == 0.25 and summary["labels_changed"] == 12  # round(0.25 * 48)


def test_eval_reports_what_training_measured_and_writes_its_files(trained, tmp_path, capsys):
    run, _, summary = trained
    assert main(["eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'ev'}", "fgsm_eps=[0,2,8]"]) == 0
    report = read_eval(tmp_path / "ev")
    assert report["checkpoint"] == str((run / "best.pt").resolve())  # a run dir means its best.pt
    clean = report["clean"]
    # The same data and the same metric functions as the training run's last evaluation.
    assert clean["acc1"] == summary["final_val_acc1"]
    assert clean["ece"] == pytest.approx(summary["final_val_ece"], abs=1e-6)
    assert clean["nll"] == pytest.approx(summary["final_val_nll"], rel=1e-5)
    assert 0 <= clean["mce"] <= 1 and clean["mce"] >= clean["ece"] and 0 <= clean["brier"] <= 2
    assert report["dataset"] == {"name": "imagefolder", "split": "val", "samples": 30, "num_classes": 3,
                                 "unreadable": 0}
    assert report["run"]["label"] == "ERM noise 25%"

    temp = report["temperature"]
    assert temp["fit_samples"] == 15 and temp["report_samples"] == 15 and "seed 0" in temp["fit_on"]
    assert temp["after"]["acc1"] == temp["before"]["acc1"]  # T never changes a prediction
    assert temp["value"] > 0

    fgsm = report["fgsm"]
    assert [row["eps_255"] for row in fgsm] == [0, 2, 8] and fgsm[1]["eps"] == pytest.approx(2 / 255)
    assert fgsm[0]["acc1"] == clean["acc1"]  # epsilon 0 is the clean accuracy, exactly
    # Each image's class under attack is kept beside the logits, for paired tests between runs.
    saved = torch.load(tmp_path / "ev" / "val_logits.pt")
    attacked = saved["fgsm"]["predictions"]
    assert saved["fgsm"]["eps_255"] == [0, 2, 8] and attacked.shape == (3, 30)
    assert torch.equal(attacked[0], saved["logits"].argmax(1))
    assert [100.0 * attacked[i].eq(saved["labels"]).double().mean().item() for i in range(3)] == pytest.approx(
        [row["acc1"] for row in fgsm])

    width, height = Image.open(tmp_path / "ev" / "reliability.png").size
    assert (width, height) == (924, 594)  # before and after side by side (2 x 4.2 in), counts under each (5.4 in)
    out = capsys.readouterr().out
    assert "adaptive ECE" in out and "FGSM" in out and f"temperature T={temp['value']:.4f}" in out


def test_eval_on_moved_data_with_the_temperature_fitted_on_train(trained, tmp_path):
    run, data, _ = trained
    shutil.copytree(data, tmp_path / "moved")
    next((tmp_path / "moved" / "val" / "ant").iterdir()).unlink()  # tells the copy from the original
    # dataset.root alone: the checkpoint's dataset settings (cache, image_size, ...) with a new root.
    assert main(["eval", f"checkpoint={run / 'last.pt'}", f"dataset.root={tmp_path / 'moved'}", "heldout=train",
                 "fgsm_eps=[]", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    report = read_eval(tmp_path / "ev")
    temp = report["temperature"]
    assert report["dataset"]["samples"] == 29
    assert temp["fit_samples"] == 48 and temp["report_samples"] == 29 and "train split" in temp["fit_on"]
    assert temp["before"] == pytest.approx(report["clean"])  # reports on the whole val set
    assert report["fgsm"] == []


def test_dataset_keys_alone_select_the_checkpoints_dataset(trained):
    run, data, _ = trained
    # imagefolder has no default root: the checkpoint's comes along, quoted for Hydra.
    assert eval_overrides([f"checkpoint={run}", "dataset.cache=false"]) == [
        "dataset=imagefolder", f"dataset.root='{data}'", f"checkpoint={run}", "dataset.cache=false"]
    assert eval_overrides([f"checkpoint={run}", "dataset=cifar10", "dataset.root=/x"])[0] == f"checkpoint={run}"
    assert eval_overrides(["heldout=0.3"]) == ["heldout=0.3"]
    saved = make_config("dataset=imagefolder", f"dataset.root={data}", "dataset.image_size=16", "dataset.cache=true")
    chosen = make_config("dataset=imagefolder", "dataset.root=/elsewhere")
    moved = eval_dataset_config(saved.dataset, chosen.dataset, ["root"])
    assert (moved.root, moved.image_size, moved.cache) == ("/elsewhere", 16, True)  # only root changed
    other = make_config("dataset=cifar100").dataset
    assert eval_dataset_config(saved.dataset, other, ["root"]) is other  # another dataset: its own defaults


@pytest.mark.parametrize("override,message", [
    ("checkpoint=/no/such/run", "checkpoint does not exist"),
    ("heldout=1.5", "heldout must be a fraction in (0, 1)"),
    ("heldout=val", "heldout must be a fraction of the validation set or another split"),
    ("fgsm_eps=[-1]", "fgsm_eps must be pixel levels in [0, 255]"),
    ("batch_size=0", "batch_size must be >= 1"),
])
def test_eval_config_errors_are_one_line_and_exit_2(trained, override, message, tmp_path, capsys):
    run, _, _ = trained
    args = [f"checkpoint={run}", override] if not override.startswith("checkpoint=") else [override]
    assert main(["eval", *args, f"hydra.run.dir={tmp_path / 'ev'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixtrain: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "ev").exists()


def test_eval_errors_found_when_reading_the_checkpoint_exit_2(trained, tmp_path, capsys):
    run, _, _ = trained
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for ckpt, extra, message in [
        (tmp_path / "empty_run", [], "holds neither best.pt nor last.pt"),
        (tmp_path / "junk.pt", [], "is not a readable mixtrain checkpoint"),
        (run / "best.pt", ["dataset=cifar10_mini", "heldout=test"], "cifar10_mini has only the splits train and val"),
        (run / "best.pt", ["dataset=cifar10_mini"], "the data has 10 classes but the checkpoint has 3"),  # trained on 3
    ]:
        code = main(["eval", f"checkpoint={ckpt}", *extra, f"hydra.run.dir={tmp_path / 'ev'}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "ev").exists()  # a refused command leaves nothing behind


def test_compare_marks_the_better_value(trained, tmp_path, capsys):
    run, _, _ = trained
    # A second "run": the same weights with the classifier halved, i.e. the same model at T=2, saved as
    # a mixup run. Same predictions (equal top-1, both marked), softer confidences, half the fitted T.
    state = checkpoint.load(run / "best.pt")
    state["model"]["head.fc.weight"] = state["model"]["head.fc.weight"] / 2
    state["model"]["head.fc.bias"] = state["model"]["head.fc.bias"] / 2
    state["config"]["augment"] = asdict(MixupConfig(alpha=0.2))
    checkpoint.save_atomic({k: v for k, v in state.items() if k != "format"}, tmp_path / "soft.pt")

    assert main(["compare", str(run), str(tmp_path / "soft.pt"), "fgsm_eps=[0,4]",
                 f"hydra.run.dir={tmp_path / 'cmp'}"]) == 0
    out = capsys.readouterr().out
    assert "ERM noise 25%" in out and "mixup a=0.2 noise 25%" in out
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {row["metric"]: row for row in summary["rows"]}
    erm, soft = (r["report"] for r in summary["runs"])
    assert rows["top-1 (%)"]["values"] == [erm["clean"]["acc1"], soft["clean"]["acc1"]]
    assert erm["clean"]["acc1"] == soft["clean"]["acc1"]
    assert soft["temperature"]["value"] == pytest.approx(erm["temperature"]["value"] / 2, rel=1e-6)
    assert soft["temperature"]["after"]["nll"] == pytest.approx(erm["temperature"]["after"]["nll"], rel=1e-6)
    assert rows["NLL"]["better"] == "lower" and rows["FGSM 4/255 top-1 (%)"]["better"] == "higher"
    assert rows["temperature T"]["better"] is None
    assert (tmp_path / "cmp" / "run1" / "eval.json").is_file() and (tmp_path / "cmp" / "run2" / "eval.json").is_file()

    # An eval.json is read, not evaluated again.
    assert main(["compare", str(tmp_path / "cmp" / "run2"), str(tmp_path / "cmp" / "run1" / "eval.json"),
                 "--out", str(tmp_path / 'cmp2')]) == 0
    again = json.loads((tmp_path / "cmp2" / "compare.json").read_text())
    assert [r["report"] for r in again["runs"]] == [soft, erm]
    assert not (tmp_path / "cmp2" / "run1").exists()
    assert "read" in capsys.readouterr().out


def test_best_marks():
    assert best_marks([1.0, 3.0, 3.0], "higher") == [False, True, True]
    assert best_marks([0.2, None, 0.1], "lower") == [False, False, True]
    assert best_marks([0.2, 0.1], None) == [False, False]
    assert best_marks([0.2, None], "lower") == [False, False]  # nothing to compare against


def test_compare_needs_a_run(tmp_path, capsys):
    assert main(["compare", "heldout=0.5"]) == 2
    assert "name at least one run dir" in capsys.readouterr().err


NOISE_RECIPES = {  # recipe: (label_noise, augment, alpha, "expected" test error at the last epoch)
    "preact_resnet18_cifar10_noise20_erm": (0.2, "none", None, "16.6%"),
    "preact_resnet18_cifar10_noise20_mixup": (0.2, "mixup", 8.0, "6.4%"),
    "preact_resnet18_cifar10_noise50_erm": (0.5, "none", None, "44.6%"),
    "preact_resnet18_cifar10_noise50_mixup": (0.5, "mixup", 32.0, "12.7%"),
}


@pytest.mark.parametrize("name", sorted(NOISE_RECIPES))
def test_noisy_label_recipes_follow_table_2(name):
    noise, augment, alpha, expected = NOISE_RECIPES[name]
    cfg = to_object(compose_config(f"recipe={name}"))
    assert cfg.dataset.name == "cifar10" and cfg.dataset.label_noise == noise
    assert cfg.model.name == "preact_resnet18" and cfg.augment.name == augment
    assert getattr(cfg.augment, "alpha", None) == alpha
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (200, 128, 0.1, 1e-4)
    assert cfg.sched.name == "multistep" and cfg.sched.decay_milestones == [100, 150]
    header = (recipes_dir() / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert header[2].startswith("# source: ") and "Table 2" in header[2]
    assert header[3].startswith(f"# expected: {expected} test error at the last epoch")
    assert header[4].startswith("# hardware: ")
