"""Strangers' files (issue 32, part A): a checkpoint or run dir from someone else never runs code and
never loses data. Each test holds one defect of the issue; one tiny finished run is shared by all."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, make_image_folder, run_cli, tiny_folder

from mixtrain.artifacts import checkpoint
from mixtrain.cli import main
from mixtrain.errors import MixtrainError
from mixtrain.files import claim_dir, open_append, release_dir, write_text_atomic

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trained(tiny_run):
    """The shared finished run (``tiny_run``): ``root/run``, its data ``root/data``."""
    return tiny_run


def folder(data: Path) -> list:
    return tiny_folder(data)


def one_line_error(text: str) -> str:
    assert text.startswith("mixtrain: error: ") and text.count("\n") == 1 and "Traceback" not in text, text
    return text


def copy_run(trained: Path, tmp_path: Path, name: str = "theirs") -> Path:
    run = tmp_path / name
    shutil.copytree(trained / "run", run)
    return run


def plant_config(run: Path, change) -> None:
    """Rewrite the stored config of every checkpoint of ``run`` with ``change(config)`` (its tensors,
    and so their checksum, stay as they were)."""
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        change(state["config"])
        torch.save(state, run / name)


def pipe_dataset(marker: Path):
    """A stored dataset whose every URL is a shell command that makes a file in ``marker``."""
    def change(config):
        config["dataset"] = {"name": "webdataset", "train_urls": f"pipe:touch {marker}/train",
                             "val_urls": f"pipe:touch {marker}/val", "info": f"pipe:touch {marker}/info",
                             "image_size": 16}
    return change


def marker_module(tmp_path: Path, name: str) -> Path:
    """A module ``name`` on a path of its own whose import leaves ``tmp_path/imported``: an installed
    module that a stored ``_target_`` could name."""
    path = tmp_path / "site"
    path.mkdir(exist_ok=True)
    (path / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'imported')!r}).touch()\n"
                                     "class Net:\n    pass\n")
    return path

# --------------------------------------------------------------------------- 1: code from data


def test_a_checkpoints_pipe_url_runs_no_command_in_eval_or_compare(trained, tmp_path, capsys):
    run, marker = copy_run(trained, tmp_path), tmp_path / "marker"
    marker.mkdir()
    plant_config(run, pipe_dataset(marker))
    capsys.readouterr()
    assert main(["eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'ev'}"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"{run / 'best.pt'} names code to run (dataset.train_urls='pipe:touch {marker}/train'" in err
    assert err.rstrip().endswith("pass trust=[dataset.train_urls,dataset.val_urls,dataset.info]")
    # A key passed on the command line is the user's own; the others are still refused.
    assert main(["eval", f"checkpoint={run}", f"dataset.val_urls={trained / 'x.tar'}",
                 f"hydra.run.dir={tmp_path / 'ev'}"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("pass trust=[dataset.train_urls,dataset.info]")
    assert main(["compare", str(run), "fgsm_eps=[]", "--out", str(tmp_path / "cmp")]) == 2
    assert "names code to run" in capsys.readouterr().err
    assert list(marker.iterdir()) == [] and not list(run.parent.glob("*.json"))  # `touch DIR/_info.json` neither
    assert not (tmp_path / "ev").exists() and not (tmp_path / "cmp").exists()
    # trust= is the user passing it: then it runs, as WebDataset runs it.
    assert main(["eval", f"checkpoint={run}", "trust=[dataset]", f"hydra.run.dir={tmp_path / 'ev'}"]) == 2
    assert list(marker.iterdir())


def test_a_stored_import_path_is_never_imported_by_predict_export_eval_or_load_model(trained, tmp_path,
                                                                                      monkeypatch, capsys):
    import mixtrain

    run = copy_run(trained, tmp_path)
    monkeypatch.syspath_prepend(str(marker_module(tmp_path, "strangers_marker_a")))

    def change(config):
        config["model"] = {"name": "custom", "_target_": "strangers_marker_a.Net", "kwargs": {}}
        config["augment"]["_target_"] = "strangers_marker_a.Net"

    plant_config(run, change)
    images = trained / "data" / "val"
    capsys.readouterr()
    for args in (["predict", f"checkpoint={run}", f"inputs={images}", f"out={tmp_path / 'p.csv'}"],
                 ["export", f"checkpoint={run}", f"out={tmp_path / 'exp'}"],
                 ["eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'ev'}"]):
        assert main(args) == 2, args
        err = one_line_error(capsys.readouterr().err)
        assert "names code to run (model._target_='strangers_marker_a.Net', augment._target_=" in err
        assert err.rstrip().endswith("pass trust=[model._target_,augment._target_]")
    with pytest.raises(MixtrainError, match="names code to run"):
        mixtrain.load_model(run)
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 2  # last.pt, on resume
    assert "pass model._target_, augment._target_ with the values it names" in capsys.readouterr().err
    assert not (tmp_path / "imported").exists() and not (tmp_path / "p.csv").exists()
    assert not (tmp_path / "exp").exists() and not (tmp_path / "ev").exists()
    # Trusted, it is imported (and then found not to be a model that fits).
    assert main(["predict", f"checkpoint={run}", f"inputs={images}", f"out={tmp_path / 'p.csv'}",
                 "trust=[model._target_,augment._target_]"]) != 0
    assert (tmp_path / "imported").exists()


def overrides_file(run: Path, overrides: list) -> None:
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def test_resume_runs_no_command_from_a_planted_overrides_file(trained, tmp_path):
    run, marker = copy_run(trained, tmp_path), tmp_path / "marker"
    marker.mkdir()
    overrides_file(run, ["dataset=webdataset", f"dataset.train_urls=pipe:touch {marker}/train",
                         f"dataset.val_urls=pipe:touch {marker}/val", "dataset.image_size=16", *TINY])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = run_cli("train", f"resume={run}", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 2
    err = one_line_error(result.stderr)
    source = run / ".hydra" / "overrides.yaml"
    assert f"{source} names code to run (dataset.train_urls='pipe:touch {marker}/train'" in err
    assert err.rstrip().endswith("pass dataset.train_urls=... dataset.val_urls=... on this command line")
    assert list(marker.iterdir()) == [] and not list(tmp_path.glob("*.json"))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # no .hydra/resume-* either


def test_resume_imports_nothing_a_planted_overrides_file_names(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    site = marker_module(tmp_path, "strangers_marker_b")
    overrides_file(run, [*folder(trained / "data"), "model=custom", "model._target_=strangers_marker_b.Net"])
    result = run_cli("train", f"resume={run}", "trainer.epochs=2", cwd=tmp_path,
                     env={"PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}"})
    assert not (tmp_path / "imported").exists()
    assert result.returncode == 2
    assert "overrides.yaml names code to run (model._target_='strangers_marker_b.Net')" in one_line_error(result.stderr)


def test_resume_loads_no_config_file_a_planted_group_choice_names(trained, tmp_path):
    # A path as a group's option makes Hydra load any YAML file, and one can add Hydra callbacks (code).
    run = copy_run(trained, tmp_path)
    site = marker_module(tmp_path, "strangers_marker_c")
    (tmp_path / "x.yaml").write_text("# @package _global_\nhydra:\n  callbacks:\n    theirs:\n"
                                     "      _target_: strangers_marker_c.Net\n")
    choice = "../" * 30 + str(tmp_path / "x").lstrip("/")
    overrides_file(run, [f"dataset={choice}", *TINY])
    result = run_cli("train", f"resume={run}", "trainer.epochs=2", cwd=tmp_path,
                     env={"PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}"})
    assert not (tmp_path / "imported").exists()  # Hydra instantiated no callback from it
    assert result.returncode == 2
    assert f"overrides.yaml names dataset='{choice}', which is not an option's name" in one_line_error(result.stderr)


def test_resume_takes_no_config_dir_from_the_run_dir(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    theirs = tmp_path / "their_conf"
    theirs.mkdir()
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    saved = yaml.safe_load(hydra_yaml.read_text())
    saved["hydra"]["runtime"]["config_sources"].append({"path": str(theirs), "schema": "file",
                                                         "provider": "command-line"})
    hydra_yaml.write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"was trained with the configs of {theirs} (-cd), which may name code: pass -cd {theirs}" in err
    assert main(["train", "-cd", str(theirs), f"resume={run}", "trainer.epochs=2"]) == 0  # passed: the user's

# --------------------------------------------------------------------------- 2: links in a run dir


@pytest.mark.parametrize("planted", ["train.log", "metrics.jsonl", "tb"])
def test_a_run_writes_through_no_link_planted_in_its_dir(trained, planted, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_text("mine\n")
    target = outside / ("kept" if planted == "train.log" else "new")  # an existing file, or a dangling link
    run = tmp_path / "run"
    run.mkdir()
    (run / planted).symlink_to(target)
    capsys.readouterr()
    assert main(["train", *folder(trained / "data"), f"hydra.run.dir={run}"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"{run / planted} is a symbolic link (to {target}): a run writes only regular files" in err
    assert sorted(p.name for p in outside.iterdir()) == ["kept"] and (outside / "kept").read_text() == "mine\n"
    assert sorted(p.name for p in run.iterdir()) == [planted]  # Hydra wrote nothing either


def test_resume_of_a_run_dir_with_a_planted_link_is_refused(trained, tmp_path, capsys):
    run, outside = copy_run(trained, tmp_path), tmp_path / "outside.txt"
    outside.write_text("mine\n")
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(outside)
    capsys.readouterr()
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 2
    assert "train.log is a symbolic link" in one_line_error(capsys.readouterr().err)
    assert outside.read_text() == "mine\n" and not list((run / ".hydra").glob("resume-*"))


def test_the_appended_files_are_opened_without_following_a_link(tmp_path):
    (tmp_path / "real").write_text("x\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(MixtrainError, match="is a symbolic link"):
        open_append(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(MixtrainError, match="is not a regular file"):  # never blocks on a FIFO
        open_append(tmp_path / "fifo")
    with open_append(tmp_path / "new") as f:
        f.write("a\n")
    assert (tmp_path / "new").read_text() == "a\n" and (tmp_path / "real").read_text() == "x\n"

# --------------------------------------------------------------------------- 3: sweep jobs


def sweep_args(trained: Path, sweep: Path) -> list:
    return ["-m", *folder(trained / "data"), "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            f"hydra.sweep.dir={sweep}", "seed=0,1"]


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_sweep_jobs_that_share_a_dir_are_refused_before_any_writes(trained, launcher, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("train", *sweep_args(trained, sweep), "hydra.sweep.subdir=run", *launcher, cwd=tmp_path)
    assert result.returncode == 2
    assert f"jobs 0 and 1 of the sweep would both write {sweep / 'run'}" in one_line_error(result.stderr)
    assert not (sweep / "run").exists()


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_a_sweep_job_whose_dir_another_process_holds_writes_nothing_there(trained, launcher, tmp_path):
    # Another process holds job 1's dir (a plain `train hydra.run.dir=SWEEP/1` started first, say).
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    assert claim_dir(sweep / "1")
    result = run_cli("train", *sweep_args(trained, sweep), *launcher, cwd=tmp_path)
    release_dir(sweep / "1")
    assert result.returncode == 2
    assert f"{sweep / '1'} is being written by another mixtrain process" in result.stderr.splitlines()[-1]
    assert list((sweep / "1").iterdir()) == []  # Hydra's files included
    # Job 0 wrote Hydra's three files as Hydra does (its output subdir, its overrides).
    hydra = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["output_subdir"] == ".hydra" and "hydra.output_subdir=null" not in hydra["overrides"]["hydra"]
    assert yaml.safe_load((sweep / "0" / ".hydra" / "overrides.yaml").read_text())[-1] == "seed=0"
    assert yaml.safe_load((sweep / "0" / ".hydra" / "config.yaml").read_text())["seed"] == 0
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"

# --------------------------------------------------------------------------- 4: resume from the newest state only


def test_resume_from_best_pt_or_into_another_dir_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", f"resume={run / 'best.pt'}", "trainer.epochs=2"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "resume continues a run from its newest state, its last.pt" in err
    assert err.rstrip().endswith(f"start a new run from this one with init_from={run / 'best.pt'}")
    assert main(["train", f"resume={run}", f"hydra.run.dir={tmp_path / 'new'}", "trainer.epochs=2"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"resume continues {run} in its own dir: drop hydra.run.dir=" in err and "init_from=" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before and not (tmp_path / "new").exists()
    with pytest.raises(MixtrainError, match="newest state"):
        checkpoint.resume_checkpoint(run / "best.pt")
    assert checkpoint.resume_checkpoint(run) == run / "last.pt"

# --------------------------------------------------------------------------- 7: class names


def test_eval_and_compare_refuse_data_whose_classes_were_renamed(trained, tmp_path, capsys):
    renamed = make_image_folder(tmp_path / "renamed", classes=("bee", "cat", "dog"), per_class=1, val_per_class=4,
                                size=16)
    capsys.readouterr()
    assert main(["eval", f"checkpoint={trained / 'run'}", f"dataset.root={renamed}", "fgsm_eps=[]",
                 f"hydra.run.dir={tmp_path / 'ev'}"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert ("the data's classes differ from the checkpoint's (3 of 3: 'ant' -> 'bee', 'bee' -> 'cat', 'cat' -> 'dog'); "
            "evaluate on a dataset with the classes it was trained on") in err
    assert main(["compare", str(trained / "run"), f"dataset.root={renamed}", "fgsm_eps=[]",
                 "--out", str(tmp_path / "cmp" / "out")]) == 2
    assert "the data's classes differ" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "ev").exists()
    assert not (tmp_path / "cmp").exists()  # 13: compare leaves no empty --out

# --------------------------------------------------------------------------- 8: checksums


def flip_a_weight_bit(path: Path) -> None:
    """Flip the top exponent bit of the first float of the largest tensor in a checkpoint file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = info.header_offset
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") + \
        int.from_bytes(data[header + 28:header + 30], "little")
    data[start + 3] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_bit_flipped_checkpoint_is_one_line_not_silent_nan(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    flip_a_weight_bit(run / "best.pt")
    state = torch.load(run / "best.pt", weights_only=True)  # still a readable file: only a number changed
    assert not all(torch.equal(a, b) for a, b in zip(state["model"].values(),
                                                     torch.load(trained / "run" / "best.pt")["model"].values()))
    capsys.readouterr()
    assert main(["predict", f"checkpoint={run}", f"inputs={trained / 'data' / 'val'}",
                 f"out={tmp_path / 'p.csv'}"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"{run / 'best.pt'} is damaged: its tensors no longer match the checksum saved with them" in err
    assert main(["eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'ev'}"]) == 2
    assert "is damaged" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_a_checkpoint_without_a_checksum_still_loads(trained, tmp_path):
    state = torch.load(trained / "run" / "last.pt", weights_only=True)
    assert len(state.pop(checkpoint.CHECKSUM)) == 64
    torch.save(state, tmp_path / "last.pt")  # as mixtrain wrote them before checksums
    loaded = checkpoint.load(tmp_path / "last.pt")["model"]
    assert all(torch.equal(loaded[key], value) for key, value in state["model"].items())
    digest = checkpoint.tensor_checksum
    assert digest({"a": torch.ones(2)}) != digest({"a": torch.tensor([1.0, 1.5])})  # a value,
    assert digest({"a": torch.ones(2)}) != digest({"b": torch.ones(2)})  # its place in the tree
    assert digest({"a": torch.zeros(2, 2)}) != digest({"a": torch.zeros(4)})  # and its shape

# --------------------------------------------------------------------------- 13: leftovers after a refusal


def test_calibrating_a_running_run_is_refused_before_it_evaluates(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    assert claim_dir(run)  # a training process writing it
    result = run_cli("eval", f"checkpoint={run}", "calibrate=true", "fgsm_eps=[]", f"hydra.run.dir={tmp_path / 'ev'}",
                     cwd=tmp_path)
    release_dir(run)
    assert result.returncode == 2
    assert f"{run} is being written by a running mixtrain process: calibrate after it ends" in \
        one_line_error(result.stderr)
    assert "mixtrain eval" not in result.stdout  # refused before the evaluation (its header line)
    assert not (tmp_path / "ev").exists() and not list(run.glob("*.calibration.json"))


def test_the_next_write_of_a_file_removes_its_orphan_temps(trained, tmp_path):
    out = tmp_path / "preds.csv"
    orphan = tmp_path / ".preds.csv.k1ll3d.tmp"  # a predict stopped by SIGTERM while writing
    orphan.write_text("path,class1\nhalf")
    live = tmp_path / ".preds.csv.wr1t1ng.tmp"  # another writer's, still being written
    live.write_text("")
    other = tmp_path / ".other.csv.k1ll3d.tmp"
    other.write_text("")
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["predict", f"checkpoint={trained / 'run'}", f"inputs={trained / 'data' / 'val'}",
                     f"out={out}"]) == 0
    assert not orphan.exists() and live.exists() and other.exists()
    assert len(out.read_text().splitlines()) == 13
    write_text_atomic(tmp_path / "other.csv", "x")
    assert not other.exists()
