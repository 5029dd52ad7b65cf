"""Numbers that agree with each other (issue 36): every "best" figure is the best checkpoint's; one
epoch numbering in every file and command; start-up per job; a limited evaluation is a seeded
sample across the classes and says so; the stacked-smoothing warning says what it measured; a
user's option is reported by its own name."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY, make_config, make_image_folder, run_cli
from rich.console import Console

from mixtrain import layout
from mixtrain.cli import main
from mixtrain.data import LoaderOptions, open_split
from mixtrain.mixing import MixupConfig, SwitchConfig
from mixtrain.mixing.softness import DEIT, dominant_mass, stacked_smoothing_warning
from mixtrain.runs.compare import compare
from mixtrain.train.summary import done_line, summarize
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("ant", "bee", "cat")
PHOTOS = """defaults:
  - /schema/dataset/folder@_here_
  - _self_
root: {root}
cache: true
image_size: 16
"""


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory):
    """A user's own ``dataset/photos.yaml``, 3 epochs with best.pt picked by val NLL, and val limited
    to one batch of 6 of its 24 images, stored class by class."""
    root = tmp_path_factory.mktemp("photos")
    make_image_folder(root / "data", classes=CLASSES, per_class=8, val_per_class=8, size=16)
    (root / "conf" / "dataset").mkdir(parents=True)
    (root / "conf" / "dataset" / "photos.yaml").write_text(PHOTOS.format(root=root / "data"))
    result = run_cli("train", "-cd", str(root / "conf"), "dataset=photos", "objective=final_val_nll", *TINY,
                     "trainer.epochs=3", "trainer.eval_batch_size=6", "trainer.limit_val_batches=1", "optim.lr=0.05",
                     f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    run = root / "run"
    records = [json.loads(line) for line in (run / layout.METRICS).read_text().splitlines()]
    return run, json.loads((run / layout.SUMMARY).read_text()), records, (run / layout.TRAIN_LOG).read_text()


# --------------------------------------------------------------------------- 1. best is best.pt's


def test_summarize_takes_every_best_figure_from_the_best_checkpoints_epoch():
    # The run: objective=final_val_nll, best.pt at epoch 1, the highest top-1 at epoch 0.
    history = [{"epoch": 0, "val_acc1": 26.56, "val_nll": 2.31, "val_ece": 0.10, "train_loss": 2.2, "img_per_s": 1.0},
               {"epoch": 1, "val_acc1": 17.19, "val_nll": 2.20, "val_ece": 0.05, "train_loss": 2.1, "img_per_s": 1.0}]

    class Data:
        num_classes, labels_changed, val_subset = 10, 0, None

        def unreadable(self):
            return []

    summary = summarize(history, 1, 0, 3.0, Data(), selected_by="val_nll")
    assert (summary["best_epoch"], summary["best_val_acc1"], summary["best_val_nll"]) == (1, 17.19, 2.20)
    assert (summary["max_val_acc1"], summary["max_val_acc1_epoch"]) == (26.56, 0)  # its own name
    assert summary["best_selected_by"] == "val_nll" and summary["final_epoch"] == 1
    line = done_line(summary, ema=False, checkpoints=True, run_dir=Path("/r"))
    assert "best epoch 1 (best.pt) by lowest val NLL: val acc 17.19" in line and "26.56" not in line


def test_a_runs_best_figures_and_done_line_are_its_best_checkpoints(photos_run):
    run, summary, records, log = photos_run
    from mixtrain.artifacts import checkpoint

    best = checkpoint.load(run / layout.BEST)
    epoch = best["parts"]["checkpoints"]["best_epoch"]
    assert summary["best_epoch"] == epoch == min(records, key=lambda r: r["val_nll"])["epoch"]
    assert summary["best_val_acc1"] == records[epoch]["val_acc1"]
    assert summary["best_val_nll"] == records[epoch]["val_nll"] == best["history"][-1]["val_nll"]
    assert summary["max_val_acc1"] == max(r["val_acc1"] for r in records)
    assert (f"best epoch {epoch} (best.pt) by lowest val NLL: val acc {records[epoch]['val_acc1']:.2f}, NLL "
            f"{records[epoch]['val_nll']:.4f}") in log
    assert f"done: final epoch 2: val acc {records[2]['val_acc1']:.2f}" in log


# --------------------------------------------------------------------------- 2. epochs from 0


def test_eval_and_compare_number_a_checkpoints_epoch_as_the_run_does(photos_run, tmp_path, capsys):
    run, summary, records, _ = photos_run
    assert [r["epoch"] for r in records] == [0, 1, 2]
    out = tmp_path / "ev"
    assert main(["eval", f"checkpoint={run / layout.BEST}", "fgsm_eps=[]", "bootstrap=0",
                 f"hydra.run.dir={out}"]) == 0
    # The run's own option names the data, as the run did (issue 36, item 6).
    assert f"epoch {summary['best_epoch']}) on photos (imagefolder) val" in capsys.readouterr().out
    report = json.loads((out / layout.EVAL).read_text())
    assert (report["epoch"], report["step"]) == (summary["best_epoch"], None)
    shutil.copytree(out, tmp_path / "ev2")
    console = Console(record=True, width=300)
    compare([str(out), str(tmp_path / "ev2"), "--out", str(tmp_path / "cmp")], console)  # reads both eval.json
    assert console.export_text().count(f"best.pt (epoch {summary['best_epoch']})") == 2


def test_a_mid_epoch_checkpoint_is_named_by_its_epoch_and_step():
    assert layout.checkpoint_epoch({"epoch": 3, "step": 0}) == (2, None)  # saved at the end of epoch 2
    assert layout.checkpoint_epoch({"epoch": 3, "step": 40}) == (3, 40)  # 40 steps into epoch 3
    assert layout.epoch_label(3, 40) == "epoch 3 step 40"


# --------------------------------------------------------------------------- 4. a limited evaluation


def test_a_limited_evaluation_is_a_seeded_sample_across_classes_and_says_so(photos_run):
    run, summary, _, log = photos_run
    # The val split is stored class by class: its first batch of 6 would be 6 ants.
    labels = torch.load(run / layout.LOGITS)["labels"]
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert summary["val_subset"]["images"] == 6 and summary["val_subset"]["of"] == 24
    assert "val subset: every val figure is of 6 of the 24 val images (trainer.limit_val_batches=1" in log


@pytest.mark.parametrize("cache", [True, False])
def test_the_sample_is_the_same_every_epoch_on_both_data_paths(tmp_path, cache):
    make_image_folder(tmp_path / "data", classes=CLASSES, per_class=2, val_per_class=8, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", f"dataset.cache={str(cache).lower()}",
                      "dataset.image_size=16", *TINY).dataset
    loader = open_split(cfg, "val", False, LoaderOptions(batch_size=6, max_batches=1, seed=3)).loader
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append([(images, labels) for images, labels in loader])
    (images, labels), = epochs[0]
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(images, epochs[1][0][0]) and torch.equal(labels, epochs[1][0][1])
    other = open_split(cfg, "val", False, LoaderOptions(batch_size=6, max_batches=1, seed=4)).loader
    assert other.subset.tolist() != loader.subset.tolist()  # drawn from the run's seed


# --------------------------------------------------------------------------- 3 and 5: in one process


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs, one after another in one process (as a joblib sweep with n_jobs=1 runs its jobs):
    DeiT's stacking of mixing and smoothing, then a softer one."""
    root = tmp_path_factory.mktemp("two")
    make_image_folder(root / "data", classes=CLASSES, per_class=16, val_per_class=4, size=16)
    base = ["dataset=imagefolder", f"dataset.root={root / 'data'}", "dataset.cache=true", "dataset.image_size=16",
            *TINY, "trainer.batch_size=16", "trainer.limit_train_batches=2"]
    deit = ["augment=switch", "augment.mixup_alpha=0.8", "augment.cutmix_alpha=1.0", "augment.label_smoothing=0.1"]
    soft = ["augment=mixup", "augment.alpha=1.0", "augment.label_smoothing=0.4"]
    runs = []
    for name, extra in (("deit", deit), ("soft", soft)):
        summary = fit(make_config(*base, *extra), root / name)
        record = json.loads((root / name / layout.METRICS).read_text().splitlines()[0])
        runs.append((summary, record, (root / name / layout.TRAIN_LOG).read_text()))
    return runs


def test_start_up_is_per_job_not_per_process(two_runs):
    (_, _, _), (summary, record, _) = two_runs
    # The second run's start-up is its own: shorter than the run itself, not the time since the import.
    assert 0 < record["startup_time"] <= summary["wall_time_s"]


def test_deits_stacking_is_not_warned_and_a_softer_one_is_with_what_was_measured(two_runs):
    (_, _, deit_log), (_, _, soft_log) = two_runs
    assert "label_smoothing" not in deit_log
    assert "warning: augment.label_smoothing=0.4 on top of augment=mixup: a training target puts" in soft_log
    assert "against" in soft_log and "under timm's DeiT setting" in soft_log and "alpha above" not in soft_log


def test_the_smoothing_measure_is_the_mixers_own_over_many_draws():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    # DeiT itself, and the switch with mixup_alpha=0.2 (a batch of CutMix at alpha 1 is no verdict).
    assert stacked_smoothing_warning(DEIT, 10, images, labels, seed=0) is None
    assert stacked_smoothing_warning(SwitchConfig(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1), 10, images,
                                     labels, seed=0) is None
    soft = MixupConfig(alpha=1.0, label_smoothing=0.4)
    warning = stacked_smoothing_warning(soft, 10, images, labels, seed=0)
    run, _ = dominant_mass(soft, 10, images, labels, seed=0)
    deit, _ = dominant_mass(DEIT, 10, images, labels, seed=1)
    assert f"puts {run:.3f} on its dominant class" in warning and f"against {deit:.3f}" in warning
    # Smoothing alone leaves 1 - 0.4 + 0.4 / 10 on the label; mixing takes more off.
    assert run < 0.64 and math.isclose(dominant_mass(MixupConfig(alpha=0.0, label_smoothing=0.4), 10, images, labels,
                                                     seed=0)[0], 0.64, rel_tol=1e-6)


# --------------------------------------------------------------------------- 6. names


def test_a_users_dataset_option_is_reported_by_its_name(photos_run):
    _, summary, _, log = photos_run
    assert log.splitlines()[0].startswith("mixtrain resnet20 on photos (imagefolder) (24 train / 24 val")
    assert summary["options"]["dataset"] == "photos" and summary["options"]["augment"] == "none"
