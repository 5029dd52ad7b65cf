"""Messy real folders and bad arguments: one line, exit code 2, nothing written (or a clean run
where skipping is the documented behaviour). The README's bad-input table lists every case."""

import json
import os
import shutil

import pytest
import torch
from helpers import TINY, make_config, make_image_folder, run_cli
from PIL import Image

from mixtrain.artifacts import checkpoint
from mixtrain.cli import main
from mixtrain.data import build_data
from mixtrain.errors import MixtrainError
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def folder(root, cache, *extra):
    return ["dataset=imagefolder", f"dataset.root={root}", f"dataset.cache={str(cache).lower()}",
            "dataset.image_size=16", *TINY, *extra]


def load(args):
    cfg = make_config(*args)
    return build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)


@pytest.mark.parametrize("cache", [True, False])
def test_a_jpg_name_on_a_file_that_is_not_an_image(tmp_path, cache):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=16, ext="jpg")
    fake = tmp_path / "train" / "bee" / "0001.jpg"
    fake.write_text("<html>a web page saved with a .jpg name</html>")
    with pytest.raises(MixtrainError, match=r"1 unreadable image\(s\) \(dataset.on_bad_image=error\): .*0001.jpg"):
        load(folder(tmp_path, cache, "dataset.on_bad_image=error"))
    data = load(folder(tmp_path, cache))  # skip (the default): left out, and training goes on
    seen = sum(len(y) for _, y in data.train)
    assert str(fake) in data.unreadable() and seen == 8  # 11 readable files, batches of 8


@pytest.mark.parametrize("cache", [True, False])
def test_a_decompression_bomb_is_an_unreadable_file(tmp_path, cache, monkeypatch):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=16)
    bomb = tmp_path / "val" / "cat" / "0000.png"
    Image.new("RGB", (64, 64)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses images over twice this (4096 > 2000)
    with pytest.raises(MixtrainError, match=r"1 unreadable image\(s\).*0000.png"):
        load(folder(tmp_path, cache, "dataset.on_bad_image=error"))
    data = load(folder(tmp_path, cache))
    assert sum(len(y) for _, y in data.val) == 5 and data.unreadable() == [str(bomb)]


def test_an_empty_class_folder_is_named(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=16)
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("todo: add dogs")
    with pytest.raises(MixtrainError, match=r"no images in class folder .*train/dog \(.*add images or remove it"):
        load(folder(tmp_path, False))


@pytest.mark.parametrize("cache", [True, False])
def test_class_names_with_spaces_and_non_ascii_letters_work(tmp_path, cache):
    classes = ("café crème", "sea lion", "東京")
    root = tmp_path / "my data"
    make_image_folder(root, classes=classes, per_class=8, val_per_class=3, size=16)
    summary = fit(make_config(*folder(root, cache)), tmp_path / "run")
    assert summary["status"] == "completed" and summary["num_classes"] == 3
    assert load(folder(root, cache)).classes == sorted(classes)
    assert main(["eval", f"checkpoint={tmp_path / 'run'}", "fgsm_eps=[]", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["dataset"]["samples"] == 9


def test_a_symlink_loop_inside_the_dataset_folder_is_read_once(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=16)
    os.symlink(tmp_path / "train", tmp_path / "train" / "ant" / "loop")  # train/ant/loop/ant/loop/...
    data = load(folder(tmp_path, False))
    assert len(data.train.dataset) == 12  # each real file once
    assert len(load(folder(tmp_path, True)).train.labels) == 12


def test_a_run_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    result = run_cli("train", *TINY, f"hydra.run.dir={tmp_path / 'afile' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot write the run dir" in result.stderr and "is not a directory" in result.stderr
    assert (tmp_path / "afile").read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["afile"]


@pytest.fixture
def trained(tiny_run):
    """The shared finished run (``tiny_run``), trained with ``folder(data, True)``."""
    return tiny_run


def eval_fails(capsys, *args):
    code = main(["eval", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mixtrain: error: ") and err.count("\n") == 1, err
    return err


def test_checkpoint_pointing_at_a_dir_with_no_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = eval_fails(capsys, f"checkpoint={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert "holds neither best.pt nor last.pt" in err and not (tmp_path / "ev").exists()


def test_eval_after_the_dataset_folder_moved_names_dataset_root(trained, tmp_path, capsys):
    shutil.copytree(trained / "run", tmp_path / "run")
    moved = tmp_path / "run"
    state = checkpoint.load(moved / "last.pt")
    state["config"]["dataset"]["root"] = str(tmp_path / "gone")
    checkpoint.save_atomic({k: v for k, v in state.items() if k != "format"}, moved / "last.pt")
    (moved / "best.pt").unlink()
    err = eval_fails(capsys, f"checkpoint={moved}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert "does not exist (moved since training?): pass dataset.root=NEW_PATH" in err
    assert not (tmp_path / "ev").exists()
    assert main(["eval", f"checkpoint={moved}", f"dataset.root={trained / 'data'}", "fgsm_eps=[]",
                 f"hydra.run.dir={tmp_path / 'ev'}"]) == 0


def test_a_checkpoint_from_a_future_format_version(trained, tmp_path, capsys):
    state = torch.load(trained / "run" / "last.pt", weights_only=True)
    state["format"] = "mixtrain-checkpoint-v2"
    torch.save(state, tmp_path / "future.pt")
    err = eval_fails(capsys, f"checkpoint={tmp_path / 'future.pt'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert "has checkpoint format v2, and this mixtrain reads v1 only" in err and not (tmp_path / "ev").exists()
    (tmp_path / "r").mkdir()
    torch.save(state, tmp_path / "r" / "last.pt")
    with pytest.raises(MixtrainError, match="format v2"):
        fit(make_config(*folder(trained / "data", True), f"resume={tmp_path / 'r'}"), tmp_path / "r")


def test_an_eval_dir_that_holds_a_report_is_refused_before_hydra_writes(trained, tmp_path, capsys):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "eval.json").write_text("{}")
    err = eval_fails(capsys, f"checkpoint={trained / 'run'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert "already holds eval.json" in err
    assert sorted(os.listdir(tmp_path / "ev")) == ["eval.json"]
