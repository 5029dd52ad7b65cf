"""torchrun + DDP on the CPU (gloo, 2 processes, tiny data made here)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_image_folder

from mixtrain.artifacts import checkpoint
from mixtrain.config import config_from_dict
from mixtrain.data import build_data
from mixtrain.models import create_model
from mixtrain.runtime.precision import resolve_precision
from mixtrain.train.engine import evaluate

BASE = ["dataset=imagefolder", "dataset.image_size=16", "trainer.device=cpu", "trainer.epochs=2",
        "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.num_workers=0", "augment=mixup"]


def torchrun(args, cwd, nproc=2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mixtrain", "train", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 15 validation images: not divisible by 2, so one rank evaluates one more than the other.
    return make_image_folder(tmp_path_factory.mktemp("ddp"), per_class=12, val_per_class=5, size=16)


def single_process_eval(run_dir: Path) -> dict:
    """Evaluate the run's final checkpoint in this (single) process on the same data."""
    saved = checkpoint.load(run_dir / "last.pt")
    cfg = config_from_dict(saved["config"], "the run's checkpoint")
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), cfg.seed)
    model = create_model(cfg.model, data.num_classes).to(memory_format=torch.channels_last)
    model.load_state_dict(saved["model"])
    return evaluate(model, data.val, resolve_precision(cfg.trainer, torch.device("cpu"))).compute()


@pytest.mark.parametrize("cache", [True, False])
def test_two_processes_train_in_sync_and_report_exact_global_metrics(data_root, tmp_path, cache):
    code, out, err = finish(torchrun([*BASE, f"dataset.root={data_root}", f"dataset.cache={str(cache).lower()}"],
                                     tmp_path))
    assert code == 0, err
    (run,) = (tmp_path / "outputs").glob("*/*")  # one run dir for both ranks
    for name in ("metrics.jsonl", "summary.json", "last.pt", "best.pt", "reliability.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert out.count("done: final epoch") == 1  # only rank 0 prints
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True

    single = single_process_eval(run)
    assert summary["final_val_acc1"] == pytest.approx(single["acc1"], abs=1e-9)
    assert summary["final_val_nll"] == pytest.approx(single["nll"], abs=1e-5)
    assert summary["final_val_ece"] == pytest.approx(single["ece"], abs=1e-5)


def test_resume_under_torchrun_matches_an_uninterrupted_run(data_root, tmp_path):
    args = [*BASE, f"dataset.root={data_root}", "dataset.cache=true", "trainer.epochs=3",
            "trainer.checkpoint_every_steps=1"]
    code, _, err = finish(torchrun([*args, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path))
    assert code == 0, err

    run = tmp_path / "stopped"
    proc = torchrun([*args, f"hydra.run.dir={run}"], tmp_path)
    deadline = time.monotonic() + 300
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    finish(proc)
    saved = checkpoint.load(run / "last.pt")
    assert len(saved["ranks"]) == 2 and saved["state"]["epoch"] >= 1
    # Each rank's model-side stream (dropout, drop-path) is seeded with seed + rank.
    assert not torch.equal(saved["ranks"][0]["torch"], saved["ranks"][1]["torch"])

    code, _, err = finish(torchrun([f"resume={run}"], tmp_path))
    assert code == 0, err
    straight, resumed = checkpoint.load(tmp_path / "straight" / "last.pt"), checkpoint.load(run / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2]


def test_a_checkpoint_resumes_only_with_the_same_number_of_processes(data_root, tmp_path):
    code, _, err = finish(torchrun([*BASE, f"dataset.root={data_root}", "dataset.cache=true", "trainer.epochs=1",
                                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert code == 0, err
    result = subprocess.run([sys.executable, "-m", "mixtrain", "train", f"resume={tmp_path / 'run'}",
                             "trainer.epochs=2"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "written by 2 process(es) and this run has 1" in result.stderr

    # A second run into the same dir: rank 0 refuses it, and the other rank stops with it
    # quietly (no Hydra "Error executing job" report of a broken connection).
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    code, _, err = finish(torchrun([*BASE, f"dataset.root={data_root}", "dataset.cache=true", "trainer.epochs=1",
                                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert code != 0
    assert err.count("mixtrain: error:") == 1 and "already holds a run" in err, err
    assert "Error executing job" not in err and "Connection closed by peer" not in err, err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
