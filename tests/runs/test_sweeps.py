"""Sweeps: an alpha x seed multirun on Hydra's joblib launcher, reported by `mixtrain report`;
the objective a job returns to a sweeper (Optuna); the shipped launcher and sweeper configs."""

import csv
import itertools
import json
import math
import statistics

import pytest
import yaml
from helpers import TINY, make_image_folder, run_cli
from hydra import compose, initialize_config_dir

from mixtrain.cli import objective_value
from mixtrain.config import config_dir
from mixtrain.options import register_configs

# One training step and one evaluation per job: these tests are about the sweep machinery.
ONE_STEP = [*TINY, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.checkpoint=false"]


def folder_args(root):
    return ["dataset=imagefolder", f"dataset.root={root}", "dataset.cache=true", "dataset.image_size=8"]


def summaries(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def test_objective_value_is_the_summary_key_of_a_completed_run_else_nan():
    done = {"status": "completed", "best_val_acc1": 71.5, "final_val_ece": 0.04}
    assert objective_value(done, "best_val_acc1") == 71.5
    assert objective_value(done, "final_val_ece") == 0.04
    # A crashed, stopped or diverged job must never look like a good value to a sweeper.
    for bad in ({**done, "status": "failed"}, {**done, "status": "interrupted"}, {**done, "status": "running"},
                {**done, "best_val_acc1": float("nan")}, {"status": "completed"}):
        assert math.isnan(objective_value(bad, "best_val_acc1"))


def test_alpha_seed_sweep_on_the_joblib_launcher_and_its_report(tmp_path):
    # The README's sweep (4 alphas x 3 seeds), one step per job, two jobs at a time in
    # joblib's worker processes; then `mixtrain report` on the sweep dir.
    make_image_folder(tmp_path / "data", per_class=4, val_per_class=2, size=8)
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", "augment=mixup", "augment.alpha=0.1,0.2,0.4,1.0", "seed=0,1,2",
                     *folder_args(tmp_path / "data"), *ONE_STEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    runs = summaries(sweep)
    assert sorted(runs, key=int) == [str(i) for i in range(12)]  # one run dir per job, under one sweep dir
    assert all(s["status"] == "completed" for s in runs.values())
    jobs = sorted((s["config"]["augment"]["alpha"], s["config"]["seed"]) for s in runs.values())
    assert jobs == sorted(itertools.product([0.1, 0.2, 0.4, 1.0], [0, 1, 2]))
    # Each worker process runs several jobs: the first one's start-up holds the imports, every later
    # one's is its own (at most its run's wall time), not the time since the worker started (issue 36).
    by_worker = {}
    for job, summary in runs.items():
        startup = json.loads((sweep / job / "metrics.jsonl").read_text().splitlines()[0])["startup_time"]
        by_worker.setdefault(summary["pid"], []).append((startup, summary["wall_time_s"]))
    assert len(by_worker) == 2 and all(len(jobs) > 1 for jobs in by_worker.values())
    for jobs in by_worker.values():
        assert all(startup <= wall for startup, wall in sorted(jobs)[:-1]), jobs

    reported = run_cli("report", str(sweep), cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert "12 runs (12 completed) in 4 group(s)" in reported.stdout
    with open(sweep / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["augment.alpha"] for row in rows] == ["0.1", "0.2", "0.4", "1"]
    for row in rows:
        alpha = float(row["augment.alpha"])
        for metric in ("final_val_acc1", "final_val_ece", "final_val_nll"):
            values = [s[metric] for s in runs.values() if s["config"]["augment"]["alpha"] == alpha]
            assert row["seeds"] == "3"
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert (sweep / "report.png").stat().st_size > 10_000 and (sweep / "runs.csv").is_file()

    # TensorBoard's HParams tab over the sweep dir: each job's swept keys beside its final metrics.
    for job, summary in runs.items():
        params, metrics = tensorboard_hparams(sweep / job / "tb")
        assert params["augment.alpha"] == summary["config"]["augment"]["alpha"]
        assert params["seed"] == summary["config"]["seed"] and params["augment.name"] == "mixup"
        assert metrics["hparam/final_val_acc1"] == pytest.approx(summary["final_val_acc1"])


def tensorboard_hparams(logdir):
    """The hparams of a run's TensorBoard events (the HParams plugin's session start), and the
    values of its hparam/* scalars, read with TensorBoard's own readers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    params = {}
    events = EventAccumulator(str(logdir))
    events.Reload()
    for event_file in sorted(logdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(event_file)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, v in data.session_start_info.hparams.items():
                        params[key] = getattr(v, v.WhichOneof("kind"))
    metrics = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hparam/")}
    return params, metrics


def test_optuna_sweeper_receives_the_objective(tmp_path):
    # objective=final_val_nll, minimised by the plugin's own optuna config: the study's
    # best value is the lowest NLL among the trials' summaries.
    make_image_folder(tmp_path / "data", per_class=4, val_per_class=2, size=8)
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                     "hydra.sweeper.sampler.seed=0", "optim.lr=interval(0.01,0.2)", "objective=final_val_nll",
                     *folder_args(tmp_path / "data"), *ONE_STEP, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "setup plugin alembic" not in result.stdout + result.stderr  # Optuna's import of alembic, quiet (issue 36)
    runs = summaries(sweep)
    assert len(runs) == 2
    # The two trials run one after the other in this process: the second's start-up is its own
    # (from its start to its first batch), not the time since the process started (issue 36).
    second = json.loads((sweep / "1" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < second["startup_time"] <= runs["1"]["wall_time_s"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    lowest = min(runs.values(), key=lambda s: s["final_val_nll"])
    assert best["best_value"] == pytest.approx(lowest["final_val_nll"])
    assert best["best_params"]["optim.lr"] == pytest.approx(lowest["config"]["optim"]["lr"])


def hydra_node(*overrides):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_shipped_launcher_and_sweeper_configs():
    slurm = hydra_node("hydra/launcher=slurm_gpu").launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (slurm.gpus_per_node, slurm.tasks_per_node, slurm.timeout_min) == (1, 1, 1440)

    def direction(node):  # the plugin's default is an enum, a YAML value a string
        return getattr(node.sweeper.direction, "name", node.sweeper.direction)

    assert direction(hydra_node("hydra/sweeper=optuna_maximize")) == "maximize"
    assert direction(hydra_node("hydra/sweeper=optuna")) == "minimize"  # the plugin's default
    assert hydra_node("hydra/launcher=joblib").launcher._target_.endswith("JoblibLauncher")
