"""Records in company (issue 22): one writer per run dir (an OS lock for the life of the process),
no command writing into another's records, result files written whole, and the last tracebacks
turned into one line. Each case of the README's bad-input table added by the issue is here."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (SLOW, TINY, folder_args, make_config, make_image_folder, position, run_cli, slow_step_args, start,
                     wait_for_step, wait_until_inside)
from PIL import Image

from mixtrain.cli import main
from mixtrain.data import build_data
from mixtrain.files import claim_dir, release_dir
from mixtrain.train.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("company"), per_class=40, val_per_class=4, size=16)


def overrides_of(run: Path) -> list:
    return [line.strip("- \n") for line in (run / ".hydra" / "overrides.yaml").read_text().splitlines()]


def epochs_of(run: Path) -> list:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- one writer per run dir


def test_two_runs_started_at_once_into_one_dir_one_is_refused(data, tmp_path):
    run = tmp_path / "run"
    procs = [start([*folder_args(data), *SLOW, "trainer.epochs=1", f"optim.lr={lr}", f"hydra.run.dir={run}"],
                   tmp_path) for lr in (0.02, 0.05)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.count("\n") == 1 and ("is being written by another mixtrain process" in refused
                                         or "already holds a run" in refused)
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    lr = (0.02, 0.05)[winner]
    assert f"optim.lr={lr}" in overrides_of(run) and epochs_of(run) == [0]  # one run's records, whole
    assert json.loads((run / "summary.json").read_text())["config"]["optim"]["lr"] == lr


def test_resume_of_a_live_run_is_refused_and_the_run_goes_on(data, tmp_path):
    run = tmp_path / "run"
    # Far more epochs than the test needs: the run is alive whatever the load, until it is stopped below.
    proc = start([*folder_args(data), *SLOW, "trainer.epochs=100", f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc, epoch=0)
    second = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"{run} is being written by another mixtrain process (pid {proc.pid} on" in second.stderr
    assert not list((run / ".hydra").glob("resume-*"))  # the refused resume wrote nothing
    assert proc.poll() is None  # the first run goes on
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, proc.stderr.read()
    epochs = epochs_of(run)
    assert epochs == list(range(len(epochs)))  # no epoch twice
    assert claim_dir(run)  # the lock went with the process
    release_dir(run)


def test_runs_in_the_same_second_get_dirs_of_their_own(data, tmp_path):
    # The default run dir is named by the time: two runs that land on one name do not share it.
    args = [*folder_args(data), *SLOW, "trainer.epochs=1", "trainer.limit_train_batches=2",
            "hydra.run.dir=outputs/${now:%Y-%m-%d}"]
    procs = [start(args, tmp_path) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    day = time.strftime("%Y-%m-%d")
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [day, f"{day}-1"]
    for run in (tmp_path / "outputs").iterdir():
        assert epochs_of(run) == [0]


def test_a_sweep_into_an_existing_sweep_dir_is_refused_before_it_writes(data, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *folder_args(data), *TINY, "dataset.image_size=8", "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1", f"hydra.sweep.dir={sweep}"]
    assert run_cli("train", *args, "optim.lr=0.1,0.2", cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in [sweep / "multirun.yaml", *sweep.glob("*/.hydra/*.yaml")]}
    again = run_cli("train", *args, "optim.lr=0.3,0.4", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "already holds a sweep" in again.stderr
    assert {p: p.read_bytes() for p in before} == before
    reported = run_cli("report", str(sweep), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert reported.returncode == 0 and "2 runs (2 completed)" in reported.stdout


def test_eval_into_a_run_dir_is_refused_and_the_run_still_resumes(data, tmp_path, capsys):
    run = tmp_path / "run"
    fast = [*folder_args(data), *SLOW, "trainer.limit_train_batches=2", "trainer.checkpoint_every_steps=null"]
    assert main(["train", *fast, "trainer.epochs=1", f"hydra.run.dir={run}"]) == 0
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["eval", f"checkpoint={run}", f"hydra.run.dir={run}"]) == 2
    assert f"{run} already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 0


def test_resume_on_other_classes_of_the_same_count_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *folder_args(data), *SLOW, "trainer.epochs=1", f"hydra.run.dir={run}"]) == 0
    other = make_image_folder(tmp_path / "other", classes=("cow", "dog", "elk"), per_class=40, val_per_class=4,
                              size=16)
    capsys.readouterr()
    assert main(["train", f"resume={run}", f"dataset.root={other}", "trainer.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "the data's classes differ from the checkpoint's (3 of 3: 'ant' -> 'cow'" in err
    assert torch.load(run / "last.pt", weights_only=True)["classes"] == ["ant", "bee", "cat"]


def test_run_dirs_with_commas_and_brackets_resume(data, tmp_path):
    fast = [*folder_args(data), *SLOW, "trainer.limit_train_batches=2", "trainer.checkpoint_every_steps=null"]
    for name in ("a,b", "c[1]"):
        run = tmp_path / name
        assert main(["train", *fast, "trainer.epochs=1", f"hydra.run.dir='{run}'"]) == 0
        for epochs, given in ((2, f"resume={run}"), (3, f"resume='{run}'")):  # as typed, and as Hydra quotes it
            assert main(["train", given, f"trainer.epochs={epochs}"]) == 0
            assert epochs_of(run) == list(range(epochs))


# --------------------------------------------------------------------------- stops


def test_a_second_sigterm_is_an_interruption(data, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "step"
    # Both signals land inside one step of 3 s: the first asks for a stop after it, the second stops at once.
    proc = start([*folder_args(data), *SLOW, *slow_step_args(tmp_path, 3, mark), "trainer.checkpoint_every_steps=null",
                  f"hydra.run.dir={run}"], tmp_path)
    wait_for_step(mark, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stopped at once by a second SIGTERM" in err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_sighup_stops_with_a_checkpoint_like_sigterm(data, tmp_path):
    run = tmp_path / "run"
    proc = start([*folder_args(data), *SLOW, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc, epoch=0)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert err.startswith("mixtrain: stopped by SIGHUP at epoch 0") and f"resume={run}" in err
    assert position(run)[0] == 0 and json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_a_stop_without_checkpoints_says_so(data, tmp_path):
    run = tmp_path / "run"
    proc = start([*folder_args(data), *SLOW, "trainer.checkpoint=false", "trainer.log_every=2",
                  f"hydra.run.dir={run}"], tmp_path)
    deadline = time.monotonic() + 120
    while not (run / "train.log").exists() or "step" not in (run / "train.log").read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "no checkpoint (trainer.checkpoint=false)" in err and "last.pt" not in err
    assert not (run / "last.pt").exists()


# --------------------------------------------------------------------------- files of a run


def test_a_checkpoint_that_cannot_be_written_fails_the_run_in_one_line(data, tmp_path, monkeypatch, capsys):
    import mixtrain.artifacts.checkpoint as checkpoint

    real, calls = checkpoint.save_atomic, []

    def full_disk(state, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(28, "No space left on device", str(path))
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", full_disk)
    run = tmp_path / "run"
    assert main(["train", *folder_args(data), *SLOW, "trainer.checkpoint_every_steps=null", f"hydra.run.dir={run}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write the checkpoint {run / 'best.pt'} (No space left on device)" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]


def test_results_are_shared_as_the_umask_says_and_orphan_temps_are_cleared(data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *folder_args(data), *SLOW, "trainer.limit_train_batches=2", "trainer.epochs=1",
                 f"hydra.run.dir={run}"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for name in ("last.pt", "summary.json", "metrics.jsonl", "val_logits.pt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~mask, name
    orphan = run / ".last.pt.abc123.tmp"  # what a SIGKILL in the middle of a checkpoint leaves
    orphan.write_bytes(b"half a checkpoint")
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 0
    assert not orphan.exists()


def test_wall_time_adds_up_over_a_resume(data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *folder_args(data), *SLOW, "trainer.epochs=1", f"hydra.run.dir={run}"]) == 0
    first = json.loads((run / "summary.json").read_text())["wall_time_s"]
    saved = torch.load(run / "last.pt", weights_only=True)["state"]["wall_time"]  # the first process, to its checkpoint
    assert 0.5 * first < saved <= first
    began = time.perf_counter()
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 0
    second = time.perf_counter() - began
    total = json.loads((run / "summary.json").read_text())["wall_time_s"]
    assert saved < total <= saved + second


# --------------------------------------------------------------------------- images


MODES = {  # PIL mode -> (how to make it from a grey level g in 0..255, the grey the loader must see)
    "1": lambda g: Image.new("1", (16, 16), int(g > 127)),
    "L": lambda g: Image.new("L", (16, 16), g),
    "P": lambda g: Image.new("L", (16, 16), g).convert("P"),
    "RGB": lambda g: Image.new("RGB", (16, 16), (g, g, g)),
    "RGBA": lambda g: Image.new("RGBA", (16, 16), (g, g, g, 128)),
    "LA": lambda g: Image.new("LA", (16, 16), (g, 200)),
    "CMYK": lambda g: Image.new("RGB", (16, 16), (g, g, g)).convert("CMYK"),
    "I;16": lambda g: Image.fromarray(np.full((16, 16), g * 257, dtype=np.uint16)),
    "I": lambda g: Image.fromarray(np.full((16, 16), g * 257, dtype=np.int32)),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_pil_mode_a_folder_holds_reads_at_its_grey_level(mode, tmp_path):
    from mixtrain.data.images import load_rgb

    for g in (40, 200):
        path = tmp_path / f"{g}.{'tiff' if mode in ('CMYK', 'I') else 'png'}"
        MODES[mode](g).save(path)
        pixels = np.asarray(load_rgb(str(path)), dtype=np.int64)
        want = 255 * (g > 127) if mode == "1" else g
        assert abs(pixels.mean() - want) <= 1, (mode, g, pixels.mean())


def test_a_16_bit_png_trains_at_its_brightness_and_a_float_image_is_named(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=16)
    deep = tmp_path / "train" / "ant" / "deep.png"
    Image.fromarray(np.full((16, 16), 100 * 257, dtype=np.uint16)).save(deep)
    floating = tmp_path / "train" / "bee" / "float.tiff"
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(floating)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.cache=true", "dataset.image_size=16",
                      *TINY)
    loaded = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    assert loaded.unreadable() == [str(floating)]
    from mixtrain.data.folder import decode_folder, open_image_folder

    images, _, bad, _ = decode_folder(open_image_folder(str(tmp_path), "train", "dataset.train_split"), 16)
    assert bad == [str(floating)] and any(abs(float(img.float().mean()) - 100) < 1 for img in images)


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    make_image_folder(tmp_path / "data", classes=("ant",), per_class=16, val_per_class=2, size=16)
    assert main(["train", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", *TINY,
                 f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "the data has 1 class (ant): a classifier needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- predict, export, calibrate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    make_image_folder(root / "data", per_class=8, val_per_class=3, size=16)
    fit(make_config("dataset=imagefolder", f"dataset.root={root / 'data'}", "dataset.image_size=16", *TINY,
                    "trainer.epochs=2"), root / "run")
    return root


def predict(trained, *args):
    return main(["predict", f"checkpoint={trained / 'run' / 'last.pt'}", *args])


def test_a_predict_that_dies_halfway_leaves_no_file(trained, tmp_path, monkeypatch):
    import mixtrain.inference.predict as module

    real = module.predict_batches

    def dies(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt  # a kill after the first batch

    monkeypatch.setattr(module, "predict_batches", dies)
    out = tmp_path / "preds.csv"
    with pytest.raises(KeyboardInterrupt):
        module.predict(make_config(f"checkpoint={trained / 'run' / 'last.pt'}", f"inputs={trained / 'data'}",
                                   f"out={out}", "batch_size=2", "num_workers=0", config_name="predict"))
    assert not out.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    assert predict(trained, f"inputs={trained / 'data'}", f"out={out}", "num_workers=0") == 0  # nothing to refuse


def test_predict_out_names_and_stale_error_lists(trained, tmp_path, capsys):
    images = trained / "data" / "val"
    assert predict(trained, f"inputs={images}", f"out={tmp_path / 'p.json'}") == 2
    assert "must end in .csv or .jsonl" in capsys.readouterr().err
    assert predict(trained, f"inputs={images}", f"out={tmp_path / 'p.JSONL'}", "num_workers=0") == 0
    assert json.loads((tmp_path / "p.JSONL").read_text().splitlines()[0])["classes"]
    broken = tmp_path / "in"
    broken.mkdir()
    (broken / "bad.jpg").write_text("not an image")
    Image.new("RGB", (16, 16)).save(broken / "good.png")
    out = tmp_path / "q.csv"
    assert predict(trained, f"inputs={broken}", f"out={out}", "num_workers=0") == 0
    assert (tmp_path / "q_errors.csv").exists()
    (broken / "bad.jpg").unlink()
    assert predict(trained, f"inputs={broken}", f"out={out}", "overwrite=true", "num_workers=0") == 0
    assert not (tmp_path / "q_errors.csv").exists()  # the earlier list would name a file that is fine now


@pytest.mark.parametrize("case,message", [
    ("glob of folders", "matches 2 folder(s) and no file"),
    ("out is a dir", "is a directory: name a file in it"),
    ("out under a file", "is not a directory; pick another out="),
    ("list not utf-8", "is not UTF-8 text"),
])
def test_predict_bad_input_is_one_line(trained, tmp_path, capsys, case, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "paths.txt").write_bytes(b"\xff\xfe/x.jpg\n")
    args = {"glob of folders": [f"inputs={trained / 'data'}/*", f"out={tmp_path / 'p.csv'}"],
            "out is a dir": [f"inputs={trained / 'data'}", f"out={tmp_path}", "overwrite=true"],
            "out under a file": [f"inputs={trained / 'data'}", f"out={tmp_path / 'afile' / 'p.csv'}"],
            "list not utf-8": [f"inputs={tmp_path / 'paths.txt'}", f"out={tmp_path / 'p.csv'}"]}[case]
    assert predict(trained, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_device_name_torch_cannot_parse_is_one_line_in_eval_and_predict(trained, tmp_path, capsys):
    ckpt = f"checkpoint={trained / 'run' / 'last.pt'}"
    for argv in (["eval", ckpt, "device=cuda:x", f"hydra.run.dir={tmp_path / 'ev'}"],
                 ["predict", ckpt, f"inputs={trained / 'data'}", "device=cuda:-1", f"out={tmp_path / 'p.csv'}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "device must be auto, cpu, cuda or cuda:N" in err
    assert not list(tmp_path.iterdir())


def test_export_refuses_a_file_and_an_opset_it_cannot_write(trained, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    ckpt = f"checkpoint={trained / 'run' / 'last.pt'}"
    assert main(["export", ckpt, f"out={tmp_path / 'afile'}"]) == 2
    assert "is a file: out names a directory" in capsys.readouterr().err
    assert main(["export", ckpt, "format=onnx", "opset=999", f"out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the ONNX exporter refused this model at opset 999" in err
    assert not (tmp_path / "x").exists()


def test_each_checkpoint_keeps_its_own_calibration(trained, tmp_path):
    from mixtrain.artifacts.model import load_model

    run = trained / "run"
    for name in ("best.pt", "last.pt"):
        assert main(["eval", f"checkpoint={run / name}", "calibrate=true", "fgsm_eps=[]", "bootstrap=0", "heldout=0.3",
                     f"hydra.run.dir={tmp_path / name}"]) == 0
    best, last = (json.loads((run / f"{n}.calibration.json").read_text()) for n in ("best", "last"))
    assert best["checkpoint"] == "best.pt" and last["checkpoint"] == "last.pt"
    assert load_model(run / "best.pt").temperature == best["temperature"]
    assert load_model(run / "last.pt").temperature == last["temperature"]


# --------------------------------------------------------------------------- report


def write_run(path: Path, summary, metrics: bytes = b"") -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary) if not isinstance(summary, str) else summary)
    (path / "metrics.jsonl").write_bytes(metrics)


def test_report_reads_damaged_records_and_odd_names(tmp_path):
    done = {"status": "completed", "best_val_acc1": 50.0, "epochs": 2, "config": {"seed": 0}}
    write_run(tmp_path / "runs" / "²", {**done, "epochs": "three"})
    write_run(tmp_path / "runs" / "b", done, b'{"epoch": 0, "val_acc1": 40.0}\n{"epoch": 1, \xff}\n')
    write_run(tmp_path / "runs" / "c", '{"status": "completed", "best_val_acc1": 51.0, "epochs": 1e999}')
    result = run_cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "3 runs (3 completed)" in result.stdout


def test_report_asks_before_replacing_a_report(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", {"status": "completed", "best_val_acc1": 50.0, "config": {"seed": 0}})
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    before = (out / "report.csv").read_bytes()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert "already holds report.csv: pass --overwrite" in capsys.readouterr().err
    assert (out / "report.csv").read_bytes() == before
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--overwrite"]) == 0
