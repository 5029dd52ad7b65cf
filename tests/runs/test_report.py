"""``mixtrain report`` on run dirs written by hand (every status of the summary.json
protocol), and the reliability diagram each run writes."""

import csv
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import TINY, compose_config, make_config, make_image_folder
from omegaconf import OmegaConf
from PIL import Image

from mixtrain.cli import main
from mixtrain.config import asdict, to_object
from mixtrain.layout import OBJECTIVES
from mixtrain.runs.dirs import collect, process_alive
from mixtrain.runs.report import differing_keys, group_runs, report


@functools.lru_cache(maxsize=None)
def composed(overrides):
    """The saved forms of a config: summary.json's ``config`` and Hydra's .hydra/config.yaml."""
    cfg = compose_config(*overrides)
    return json.dumps(asdict(to_object(cfg))), OmegaConf.to_yaml(cfg)


def write_run(run_dir, overrides, status="completed", metrics=None, epochs_done=2, extra=None, hydra=True, seed=0):
    """A run dir as mixtrain writes it: summary.json (the status protocol), metrics.jsonl, .hydra/."""
    saved, yaml = composed(tuple(overrides))
    cfg = {**json.loads(saved), "seed": seed}
    overrides = [*overrides, f"seed={seed}"]
    run_dir.mkdir(parents=True)
    records = [{"epoch": e, "train_loss": 2.0 - e, "val_acc1": 40.0 + 10 * e, "val_ece": 0.1, "val_nll": 1.5}
               for e in range(epochs_done)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"status": status, "config": cfg, "epochs": epochs_done, **(metrics or {}), **(extra or {})}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if hydra:  # what Hydra writes into a job's dir before the job starts
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.replace("\nseed: 0\n", f"\nseed: {seed}\n"))
    return run_dir


def metrics(best, final, ece, nll):
    return {"best_val_acc1": best, "final_val_acc1": final, "final_val_ece": ece, "final_val_nll": nll}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sweep(tmp_path):
    """An alpha x seed sweep: two complete groups, and every way a run can fail to complete."""
    root = tmp_path / "sweep"
    values = {  # alpha -> per seed (best, final, ece, nll)
        0.2: [(80.0, 79.0, 0.05, 0.60), (82.0, 80.0, 0.07, 0.64)],
        1.0: [(78.0, 77.5, 0.12, 0.70), (79.0, 78.5, 0.10, 0.66)],
    }
    num = 0
    for alpha, per_seed in values.items():
        for seed, m in enumerate(per_seed):
            write_run(root / str(num), ["augment=mixup", f"augment.alpha={alpha}"], seed=seed,
                      metrics=metrics(*m))
            num += 1
    host = socket.gethostname()
    # alpha 0.4: still running (this process), crashed (its pid is gone), failed, interrupted.
    write_run(root / "4", ["augment=mixup", "augment.alpha=0.4"], seed=0, status="running",
              extra={"pid": os.getpid(), "host": host})
    write_run(root / "5", ["augment=mixup", "augment.alpha=0.4"], seed=1, status="running",
              extra={"pid": dead_pid(), "host": host})
    write_run(root / "6", ["augment=mixup", "augment.alpha=0.4"], seed=2, status="failed",
              extra={"error": "loss is nan at epoch 1, step 3"})
    write_run(root / "7", ["augment=mixup", "augment.alpha=0.4"], seed=3, status="interrupted", epochs_done=1)
    # A run whose summary.json is unreadable, one with no summary.json, one that never wrote anything.
    write_run(root / "8", ["augment=mixup", "augment.alpha=0.4"], seed=4)
    (root / "8" / "summary.json").write_text('{"status": "runn')
    write_run(root / "9", ["augment=mixup", "augment.alpha=0.4"], seed=5)
    (root / "9" / "summary.json").unlink()
    write_run(root / "10", ["augment=mixup", "augment.alpha=0.4"], seed=6)
    (root / "10" / "summary.json").unlink()
    (root / "10" / "metrics.jsonl").unlink()
    return root


def test_report_groups_by_what_differs_and_lists_every_unfinished_run(sweep, capsys):
    result = report([sweep], sweep)
    out = capsys.readouterr().out
    assert result["keys"] == ["augment.alpha"]  # seeds are replicates, not groups

    rows = {row["augment.alpha"]: row for row in read_csv(sweep / "report.csv")}
    assert set(rows) == {"0.2", "0.4", "1"}
    first = rows["0.2"]
    assert first["seeds"] == "2" and first["completed_runs"] == "2"
    assert float(first["best_val_acc1_mean"]) == pytest.approx(81.0)
    assert float(first["best_val_acc1_std"]) == pytest.approx(statistics.stdev([80.0, 82.0]))  # n - 1
    assert float(first["final_val_acc1_mean"]) == pytest.approx(79.5)
    assert float(first["final_val_ece_mean"]) == pytest.approx(0.06)
    assert float(first["final_val_ece_std"]) == pytest.approx(np.std([0.05, 0.07], ddof=1))
    assert float(rows["1"]["final_val_nll_mean"]) == pytest.approx(0.68)

    # alpha 0.4 has no completed run: no statistics, but every run is counted by status.
    unfinished = rows["0.4"]
    assert unfinished["completed_runs"] == "0" and unfinished["best_val_acc1_mean"] == ""
    counts = {k: unfinished[f"{k.replace(' ', '_')}_runs"] for k in ("running", "crashed", "failed", "interrupted",
                                                                      "not started")}
    assert counts == {"running": "1", "crashed": "3", "failed": "1", "interrupted": "1", "not started": "1"}

    runs = {row["run"]: row for row in read_csv(sweep / "runs.csv")}
    assert len(runs) == 11
    assert runs["4"]["status"] == "running" and runs["4"]["detail"] == f"pid {os.getpid()}"
    assert runs["5"]["status"] == "crashed" and "is gone" in runs["5"]["detail"]
    assert runs["6"]["status"] == "failed" and runs["6"]["detail"] == "loss is nan at epoch 1, step 3"
    assert runs["7"]["status"] == "interrupted" and runs["7"]["epochs_done"] == "1"
    assert runs["8"]["status"] == "crashed" and "unreadable" in runs["8"]["detail"]
    assert runs["9"]["status"] == "crashed" and "no summary.json" in runs["9"]["detail"]
    assert runs["9"]["last_val_acc1"] == "50.0" and runs["9"]["augment.alpha"] == "0.4"  # from .hydra/config.yaml
    assert runs["10"]["status"] == "not started" and runs["10"]["seed"] == "6"
    assert "runs that did not complete" in out and "loss is nan at epoch 1, step 3" in out
    assert "11 runs (4 completed, 1 running, 1 interrupted, 1 failed, 3 crashed, 1 not started) in 3 group(s)" in out

    with Image.open(sweep / "report.png") as image:
        assert image.size[0] > 600 and image.size[1] > 300


def test_a_reused_pid_is_not_taken_for_the_run(tmp_path):
    # This process is alive, but it started after the summary was last written: not the writer.
    run = write_run(tmp_path / "run", [], status="running", extra={"pid": os.getpid(), "host": socket.gethostname()})
    long_ago = time.time() - 10 * 24 * 3600
    os.utime(run / "summary.json", (long_ago, long_ago))
    assert not process_alive(os.getpid(), long_ago)
    assert process_alive(os.getpid(), time.time())
    (only,) = collect([run])
    assert only.status == "crashed"
    # On another host the pid cannot be checked: the run is reported running, and says so.
    other = write_run(tmp_path / "other", [], status="running", extra={"pid": 1, "host": "elsewhere"})
    (remote,) = collect([other])
    assert remote.status == "running" and "not checked" in remote.detail


def test_jobs_of_a_stopped_sweep_that_never_started_are_listed(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "0", ["augment=mixup", "augment.alpha=0.2"], metrics=metrics(80, 79, 0.05, 0.6))
    (root / "multirun.yaml").write_text(
        "hydra:\n"
        "  sweep:\n    dir: sweep\n    subdir: ${hydra.job.num}\n"
        "  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    max_batch_size: null\n    params: null\n"
        "  overrides:\n    task:\n    - augment=mixup\n    - augment.alpha=0.2,1.0\n    - seed=0,1\n")
    runs = collect([root])
    assert [(r.path.name, r.status) for r in runs] == [("0", "completed"), ("1", "not started"),
                                                         ("2", "not started"), ("3", "not started")]
    assert runs[3].params["augment.alpha"] == 1.0 and runs[3].params["seed"] == 1  # composed from the overrides
    assert differing_keys(runs) == ["augment.alpha"]
    groups = group_runs(runs, ["augment.alpha"])
    assert [(g.values, len(g.runs), len(g.completed)) for g in groups] == [((0.2,), 2, 1), ((1.0,), 2, 0)]


def test_keys_implied_by_a_group_choice_are_not_columns(tmp_path):
    # augment=none has no alpha/mode/prob: those keys are implied by augment.name, except
    # alpha, whose value also differs among the mixup runs.
    write_run(tmp_path / "a", ["augment=none"], metrics=metrics(70, 70, 0.1, 1.0))
    write_run(tmp_path / "b", ["augment=mixup", "augment.alpha=0.2"], metrics=metrics(71, 71, 0.1, 1.0))
    write_run(tmp_path / "c", ["augment=mixup", "augment.alpha=1.0"], metrics=metrics(72, 72, 0.1, 1.0))
    (tmp_path / "preview" / ".hydra").mkdir(parents=True)  # what `mixtrain preview` leaves: not a run
    (tmp_path / "preview" / "preview.png").write_bytes(b"")
    runs = collect([tmp_path])
    assert [r.path.name for r in runs] == ["a", "b", "c"]
    keys = differing_keys(runs)
    assert keys == ["augment.alpha", "augment.name"]
    groups = group_runs(runs, keys)
    assert [g.values for g in groups] == [(0.2, "mixup"), (1.0, "mixup"), ("-", "none")]


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixtrain: error: no runs under") and err.count("\n") == 1
    assert main(["report"]) == 2
    assert main(["report", str(tmp_path), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# --------------------------------------------------------------------------- reliability diagram


def test_reliability_diagram_png_and_tensorboard_image_of_the_final_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.cache=true",
                      "dataset.image_size=16", *TINY, "trainer.epochs=2")
    from mixtrain.train.training import fit

    summary = fit(cfg, tmp_path / "run")
    assert set(OBJECTIVES) <= set(summary) and all(isinstance(summary[k], float) for k in OBJECTIVES)
    with Image.open(tmp_path / "run" / "reliability.png") as image:
        assert image.format == "PNG" and image.size == (462, 594)  # 4.2 x 5.4 in at 110 dpi: diagram over counts
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "calibration/reliability" in events.Tags()["images"]
    (logged,) = events.Images("calibration/reliability")
    final_eval = events.Scalars("val/acc1")[-1]
    assert logged.step == final_eval.step > 0  # x = optimizer steps, at the final evaluation
    assert (logged.width, logged.height) == (462, 594)


def test_reliability_figure_draws_the_bins_and_titles_the_ece():
    from mixtrain.evaluate.metrics import calibration_bins, ece_from_bins
    from mixtrain.evaluate.reliability import pyplot, reliability_figure

    # Confidences 0.95 (2 right, 2 wrong) and 0.55 (1 right, 0 wrong), 15 bins.
    conf = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55])
    correct = torch.tensor([1, 1, 0, 0, 1])
    sums = calibration_bins(conf, correct)
    expected_ece = (4 * abs(0.95 - 0.5) + 1 * abs(0.55 - 1.0)) / 5
    assert ece_from_bins(sums) == pytest.approx(expected_ece)
    fig = reliability_figure(sums, "epoch 9")
    ax = fig.axes[0]
    assert ax.get_title() == f"epoch 9 - ECE {expected_ece:.4f}"
    accuracy_bars = ax.containers[0]
    heights = [bar.get_height() for bar in accuracy_bars]
    assert heights[14] == pytest.approx(0.5) and heights[8] == pytest.approx(1.0)  # bins [14/15, 1) and [8/15, 9/15)
    assert sum(h > 0 for h in heights) == 2
    gap_bars = ax.containers[1]  # drawn only for bins with samples, from accuracy to confidence
    assert sorted((round(b.get_y(), 4), round(b.get_height(), 4)) for b in gap_bars) == [(0.5, 0.45), (0.55, 0.45)]
    counts = [bar.get_height() for bar in fig.axes[1].containers[0]]  # the histogram under it: samples per bin
    assert counts[14] == 4 and counts[8] == 1 and sum(counts) == 5
    assert fig.axes[1].get_ylabel() == "samples (of 5)"
    pyplot().close(fig)


def test_runs_of_one_sweep_are_compared_on_hydra_configs_resolved_alike(tmp_path, monkeypatch):
    # summary.json holds the config resolved in the job's environment; a job that crashed
    # before writing one only has .hydra/config.yaml. Comparing one with the other would
    # make dataset.root look swept.
    root = "dataset.root=${oc.env:MIXTRAIN_TEST_DATA,/default}/cifar10-jpeg"
    monkeypatch.setenv("MIXTRAIN_TEST_DATA", "/job/env")
    write_run(tmp_path / "0", ["dataset=imagefolder", root], metrics=metrics(70, 70, 0.1, 1.0))
    write_run(tmp_path / "1", ["dataset=imagefolder", root], seed=1)
    (tmp_path / "1" / "summary.json").unlink()
    assert json.loads((tmp_path / "0" / "summary.json").read_text())["config"]["dataset"]["root"] == "/job/env/cifar10-jpeg"
    monkeypatch.delenv("MIXTRAIN_TEST_DATA")
    runs = collect([tmp_path])
    assert [r.status for r in runs] == ["completed", "crashed"]
    assert {r.params["dataset.root"] for r in runs} == {"/default/cifar10-jpeg"}
    assert differing_keys(runs) == []


def test_an_eval_dir_inside_a_run_is_not_a_run(tmp_path):
    from mixtrain.runs.dirs import find_run_dirs

    run = tmp_path / "study" / "erm" / "s0"
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text('{"status": "completed"}')
    (run / "eval" / ".hydra").mkdir(parents=True)  # `mixtrain eval ... hydra.run.dir=RUN/eval`
    (run / "eval" / "eval.json").write_text("{}")
    assert find_run_dirs(tmp_path / "study") == [run]
