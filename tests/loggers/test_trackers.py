"""The logger group (issue 35) against the real trackers: an MLflow tracking server started here on
127.0.0.1 with a SQLite store, W&B offline read back with wandb's own reader (``wandb leet inspect``),
TensorBoard's event reader, a logger class of your own. Every number a tracker holds is compared
with ``metrics.jsonl`` and the config it came from."""

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import SLOW, TESTS, TINY, folder_args, make_config, make_image_folder, run_cli, start, wait_until_inside

from mixtrain.artifacts import checkpoint

TINY_RUN = [*TINY, "dataset.image_size=16", "trainer.epochs=2"]  # 3 steps an epoch on `data`


# --------------------------------------------------------------------------- the trackers, for real


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path):
    """``mlflow server`` with a SQLite backend store on a free port of 127.0.0.1; (process, uri) once it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (folder / "server.log").read_text()
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.25)
    stop_mlflow_server(proc)
    raise AssertionError("the MLflow server did not start: " + (folder / "server.log").read_text()[-2000:])


def stop_mlflow_server(proc) -> None:
    """The server and its workers (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop_mlflow_server(proc)


def tracker_env(home: Path) -> dict:
    """No W&B key or login (so W&B runs offline) and no user's tracker settings; W&B's own dirs in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    return {**env, "NETRC": str(home / "no-netrc"), "WANDB_CONFIG_DIR": str(home / "wandb-config"),
            "WANDB_CACHE_DIR": str(home / "wandb-cache"), "WANDB_DATA_DIR": str(home / "wandb-data")}


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


# --------------------------------------------------------------------------- reading records back


def flat(record: dict, prefix: str = "") -> dict:
    """A metrics.jsonl record's values by dotted key (``val_ci.acc1.0``), as the trackers name them."""
    out = {}
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            out.update(flat({str(k): v for k, v in items}, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(record: dict) -> dict:
    return {k: float(v) for k, v in flat(record).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def read_metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def flat_config(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def mlflow_history(mlflow, run_id: str, key: str) -> list:
    """``[(step, value)]`` of a metric, in step order (every point the tracker holds, duplicates too)."""
    return sorted((m.step, m.value) for m in mlflow.get_metric_history(run_id, key))


def tensorboard_scalars(logdir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def wandb_records(offline_dir: str) -> list:
    """The records of an offline W&B run, read by wandb's own reader of its transaction log."""
    (log,) = Path(offline_dir).glob("run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_number(value) -> float:
    return float(value)  # W&B's JSON writes NaN as "NaN"


# --------------------------------------------------------------------------- one run, every logger


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=8, val_per_class=4, size=16)


MY_LOGGERS = '''
import json
from pathlib import Path


class Recorder:
    """Writes every call it gets as a JSON line (no base class: every method is optional)."""

    def __init__(self, name):
        self.name, self.path = name, None

    def write(self, event, **fields):
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, **fields}, default=str) + "\\n")

    def start(self, run, state):
        self.path = run.run_dir / f"{self.name}.jsonl"
        sweep = [str(run.sweep.dir), run.sweep.job] if run.sweep else None
        self.write("start", run_dir=str(run.run_dir), lr=run.config["optim"]["lr"], overrides=run.overrides,
                   sweep=sweep, resumed=run.resumed, state=state)

    def log_step(self, metrics, step):
        self.write("log_step", step=step, metrics=metrics)

    def log_epoch(self, record, step):
        self.write("log_epoch", step=step, record=record)

    def finish(self, status, summary, artifacts):
        self.write("finish", status=status, best=summary["best_val_acc1"], artifacts=sorted(p.name for p in artifacts))

    def state_dict(self):
        return {"kept": "in the checkpoint"}


class Broken:
    """A tracker that goes away at the first epoch's end."""

    def log_epoch(self, record, step):
        raise ConnectionError("tracker unreachable")
'''


@pytest.fixture(scope="module")
def swept(data, mlflow_uri, tmp_path_factory):
    """A sweep of two jobs (seed=0,1) to every logger at once: TensorBoard, CSV, MLflow (the server),
    W&B (offline), a recorder of your own, and one of your own that fails; then `mixtrain report`."""
    work = tmp_path_factory.mktemp("swept")
    (work / "my_loggers.py").write_text(MY_LOGGERS)
    env = {**tracker_env(work), "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")])}
    sweep = work / "sweep"
    result = run_cli("train", "-m", *folder_args(data), *TINY_RUN, "optim.lr=0.05", "seed=0,1",
                     "logger=[tensorboard,csv,mlflow,wandb,custom]", f"logger.mlflow.tracking_uri={mlflow_uri}",
                     "logger.mlflow.experiment_name=sweeps", "logger.custom._target_=my_loggers.Recorder",
                     "+logger.custom.kwargs.name=calls", "+logger.broken._target_=my_loggers.Broken",
                     f"hydra.sweep.dir={sweep}", cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {job: (sweep / job, json.loads((sweep / job / "summary.json").read_text()), read_metrics(sweep / job))
            for job in ("0", "1")}
    reported = run_cli("report", str(sweep), cwd=work, env=env)
    assert reported.returncode == 0, reported.stderr
    return sweep, jobs, reported.stdout


def test_mlflow_holds_every_metric_param_and_file_of_the_run(swept, mlflow_uri):
    _, jobs, _ = swept
    run, summary, records = jobs["0"]
    where = summary["loggers"]["mlflow"]
    mlflow = client(mlflow_uri)
    tracked = mlflow.get_run(where["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "0"  # the run dir's name
    assert where["tracking_uri"] == mlflow_uri and where["open"] == mlflow_uri

    # The resolved config as params, every flattened key with its value.
    assert tracked.data.params == {k: str(v) for k, v in flat_config(summary["config"]).items()}
    assert tracked.data.params["optim.lr"] == "0.05"
    # The overrides as tags.
    assert tracked.data.tags["override.optim.lr"] == "0.05" and tracked.data.tags["override.seed"] == "0"
    assert "logger=[tensorboard,csv,mlflow,wandb,custom]" in tracked.data.tags["mixtrain.overrides"].split(" ")

    # Every number of metrics.jsonl under its name, the epoch as its step, once.
    keys = set().union(*(numbers(r) for r in records))
    assert "val_acc1" in keys and "val_ci.acc1.0" in keys and "startup_time" in keys
    for key in keys:
        expected = [(r["epoch"], numbers(r)[key]) for r in records if key in numbers(r)]
        got = mlflow_history(mlflow, where["run_id"], key)
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert all(same(a, b) for (_, a), (_, b) in zip(got, expected)), key

    # The step loss at every sync point (log_every=1: every optimizer step), the same numbers
    # TensorBoard holds; each epoch's last one is that epoch's train_loss.
    loss = mlflow_history(mlflow, where["run_id"], "train/loss_running")
    board = tensorboard_scalars(run / "tb", "train/loss_running")
    assert [s for s, _ in loss] == [s for s, _ in board] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in loss] == pytest.approx([v for _, v in board], rel=1e-6)  # TensorBoard keeps float32
    assert [v for s, v in loss if s % 3 == 0] == pytest.approx([r["train_loss"] for r in records], rel=1e-6)
    assert mlflow_history(mlflow, where["run_id"], "summary/best_val_acc1") == [(2, summary["best_val_acc1"])]

    # The run's files, as they are in the run dir.
    files = {a.path for a in mlflow.list_artifacts(where["run_id"])}
    assert {"summary.json", "metrics.jsonl", "reliability.png", "train.log"} <= files
    copy = mlflow.download_artifacts(where["run_id"], "metrics.jsonl", str(run.parent.parent / "downloaded"))
    assert Path(copy).read_text() == (run / "metrics.jsonl").read_text()


def test_wandb_offline_run_read_back_with_wandbs_reader_equals_metrics_jsonl(swept):
    _, jobs, _ = swept
    run, summary, records = jobs["0"]
    where = summary["loggers"]["wandb"]
    assert where["mode"] == "offline" and where["url"] is None  # no API key: nothing needed the network
    assert Path(where["offline_dir"]).parent == run / "wandb"
    log = wandb_records(where["offline_dir"])

    (started,) = [r["run"] for r in log if r["type"] == "run"]
    assert started["run_id"] == where["id"] and started["display_name"] == "0" and started["project"] == "mixtrain"
    config = {k: v for k, v in started["config"]["update"].items() if k != "_wandb"}
    assert config == summary["config"]

    rows = [r["history"]["item"] for r in log if r["type"] == "history"]
    epochs = [row for row in rows if "epoch" in row]
    assert len(epochs) == len(records)
    for row, record in zip(epochs, records):
        for key, value in numbers(record).items():
            assert same(wandb_number(row[key]), value), key
    steps = [row["_step"] for row in rows if "train/loss_running" in row]
    assert steps == [1, 2, 3, 4, 5, 6]  # W&B's step: the optimizer step
    (ended,) = [r["exit"] for r in log if r["type"] == "exit"]
    assert ended.get("exit_code", 0) == 0
    (files,) = [r["artifact"] for r in log if r["type"] == "artifact"]
    assert files["name"] == f"run-{where['id']}-files"
    assert {"summary.json", "metrics.jsonl", "reliability.png"} <= {e["path"] for e in files["manifest"]["contents"]}


def test_csv_logger_file_equals_metrics_jsonl_row_for_row(swept):
    _, jobs, _ = swept
    for run, _, records in jobs.values():
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(records) == 2
        assert list(rows[0]) == list(dict.fromkeys(k for r in records for k in flat(r)))  # every key, first seen first
        for row, record in zip(rows, records):
            values = flat(record)
            for column, cell in row.items():
                if column not in values or values[column] is None:
                    assert cell == "", column
                else:
                    assert same(float(cell), float(values[column])), column


def test_a_logger_of_your_own_gets_every_call_and_one_that_fails_costs_only_itself(swept):
    sweep, jobs, _ = swept
    run, summary, records = jobs["0"]
    calls = [json.loads(line) for line in (run / "calls.jsonl").read_text().splitlines()]
    events = [c["event"] for c in calls]
    assert events[0] == "start" and events[-1] == "finish"
    started = calls[0]
    assert started["run_dir"] == str(run) and started["lr"] == 0.05 and "optim.lr=0.05" in started["overrides"]
    assert started["sweep"] == [str(sweep), 0] and started["resumed"] is False and started["state"] == {}
    assert [c["step"] for c in calls if c["event"] == "log_step"] == [1, 2, 3, 4, 5, 6]
    epochs = [c for c in calls if c["event"] == "log_epoch"]
    assert [c["step"] for c in epochs] == [3, 6]
    assert [json.dumps(c["record"], sort_keys=True) for c in epochs] == [json.dumps(r, sort_keys=True) for r in records]
    assert calls[-1]["status"] == "FINISHED" and calls[-1]["best"] == summary["best_val_acc1"]
    assert {"summary.json", "metrics.jsonl", "reliability.png", "train.log"} <= set(calls[-1]["artifacts"])
    assert checkpoint.load(run / "last.pt")["parts"]["loggers"]["custom"] == {"kept": "in the checkpoint"}

    # The failing one: one warning, the run completes, metrics.jsonl has every epoch.
    warnings = [line for line in (run / "train.log").read_text().splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: logger broken failed in log_epoch (ConnectionError: tracker unreachable); training "
                        "goes on without it, and metrics.jsonl keeps every epoch"]
    assert summary["status"] == "completed" and [r["epoch"] for r in records] == [0, 1]
    assert set(summary["loggers"]) == {"tensorboard", "csv", "mlflow", "wandb", "custom"}  # not broken
    assert summary["loggers"]["custom"] == {}  # a logger without where()


def test_a_sweep_is_one_mlflow_parent_run_and_one_wandb_group_and_report_opens_them(swept, mlflow_uri):
    sweep, jobs, reported = swept
    parents = {summary["loggers"]["mlflow"]["parent_run_id"] for _, summary, _ in jobs.values()}
    assert len(parents) == 1 and None not in parents
    (parent,) = parents

    mlflow = client(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("sweeps").experiment_id
    runs = {r.info.run_id: r for r in mlflow.search_runs([experiment])}
    assert len(runs) == 3  # the parent and its two jobs
    assert runs[parent].data.tags["mixtrain.sweep"] == str(sweep.resolve())
    for job, (_, summary, _) in jobs.items():
        child = runs[summary["loggers"]["mlflow"]["run_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parent and child.data.tags["mixtrain.sweep_job"] == job
        assert child.data.params["seed"] == job  # the swept key, beside every other param
        assert child.data.params == {k: str(v) for k, v in flat_config(summary["config"]).items()}
        assert child.info.status == "FINISHED"
        (started,) = [r["run"] for r in wandb_records(summary["loggers"]["wandb"]["offline_dir"]) if r["type"] == "run"]
        assert started["run_group"] == str(sweep.resolve())

    lines = reported.splitlines()
    (mlflow_line,) = [line for line in lines if line.startswith("MLflow:")]
    assert mlflow_line.startswith(f"MLflow: 2 run(s) in experiment sweeps: {mlflow_uri}") and parent in mlflow_line
    assert {a.path for a in mlflow.list_artifacts(parent, "report")} == {"report/report.csv", "report/runs.csv",
                                                                         "report/report.png"}
    (wandb_line,) = [line for line in lines if line.startswith("W&B:")]
    assert wandb_line.split("wandb sync ")[1].split() == sorted(summary["loggers"]["wandb"]["offline_dir"]
                                                                for _, summary, _ in jobs.values())
    (board_line,) = [line for line in lines if line.startswith("TensorBoard:")]
    assert board_line == f"TensorBoard: 2 run(s): tensorboard --logdir {sweep.resolve()}"
    assert "2 runs (2 completed) in 1 group(s)" in reported  # the loggers' own files are no runs


# --------------------------------------------------------------------------- resume, failure, absence


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("slow"), per_class=40, val_per_class=4, size=16)


def test_a_stop_is_killed_and_resumes_after_sigkill_continue_the_same_mlflow_run_each_step_once(
        slow_data, mlflow_uri, tmp_path):
    # 3 epochs of 30 steps, a sync (and a tracker log) after every step, a checkpoint every 10. SIGTERM
    # in epoch 0: a clean stop, KILLED. Resumed, then SIGKILL in epoch 1 with the tracker ahead of the
    # checkpoint, so the second resume trains steps the tracker has. Resumed again, to the end.
    args = [*folder_args(slow_data), *[a for a in SLOW if not a.startswith("trainer.checkpoint_every_steps")],
            "trainer.checkpoint_every_steps=10", "trainer.log_every=1", "logger=[tensorboard,mlflow]",
            f"logger.mlflow.tracking_uri={mlflow_uri}", "logger.mlflow.experiment_name=resume"]
    run = tmp_path / "run"
    mlflow = client(mlflow_uri)
    proc = start([*args, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc, epoch=0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    run_id = json.loads((run / "summary.json").read_text())["loggers"]["mlflow"]["run_id"]
    assert mlflow.get_run(run_id).info.status == "KILLED"  # stopped by a signal; it can be resumed

    proc = start([f"resume={run}"], tmp_path)
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
        saved = checkpoint.load(run / "last.pt")["state"]  # written atomically: the old one or the new one
        logged = [m.step for m in mlflow.get_metric_history(run_id, "train/loss_running")]
        if saved["epoch"] == 1 and max(logged) >= saved["global_step"] + 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = checkpoint.load(run / "last.pt")["state"]
    assert max(m.step for m in mlflow.get_metric_history(run_id, "train/loss_running")) > at_kill["global_step"]
    assert mlflow.get_run(run_id).info.status == "RUNNING"  # what a hard kill leaves

    resumed = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary, records = json.loads((run / "summary.json").read_text()), read_metrics(run)
    assert summary["loggers"]["mlflow"]["run_id"] == run_id  # the same MLflow run, continued twice
    experiment = mlflow.get_experiment_by_name("resume").experiment_id
    assert [r.info.run_id for r in mlflow.search_runs([experiment])] == [run_id]
    assert mlflow.get_run(run_id).info.status == "FINISHED"

    # Each step once, none missing; each epoch once, equal to metrics.jsonl.
    assert [s for s, _ in mlflow_history(mlflow, run_id, "train/loss_running")] == list(range(1, 91))
    for key in ("train_loss", "val_acc1", "val_nll", "lr", "epoch"):
        assert mlflow_history(mlflow, run_id, key) == [(r["epoch"], pytest.approx(r[key])) for r in records], key
    # TensorBoard: what the killed attempt logged after the checkpoint is hidden, each step once.
    assert [s for s, _ in tensorboard_scalars(run / "tb", "train/loss_running")] == list(range(1, 91))
    assert [s for s, _ in tensorboard_scalars(run / "tb", "val/acc1")] == [30, 60, 90]


def test_tensorboard_keeps_the_checkpoints_epoch_after_a_resume(data, tmp_path):
    # A run killed in epoch 1 resumes from epoch 0's checkpoint (no step checkpoints). TensorBoard
    # hid everything from the checkpoint's step on, epoch 0's own numbers (logged just after its
    # checkpoint) too, and the resumed run never logs them again.
    args = [*folder_args(data), *TINY_RUN, "trainer.keep_best=2"]
    from mixtrain.train.training import fit

    fit(make_config(*args), tmp_path / "run")
    run = tmp_path / "run"
    shutil.copy(run / "epoch-000.pt", run / "last.pt")  # where a kill inside epoch 1 leaves the run
    fit(make_config(*args, f"resume={run / 'last.pt'}"), run)
    records = read_metrics(run)
    assert tensorboard_scalars(run / "tb", "val/acc1") == [(3, pytest.approx(records[0]["val_acc1"])),
                                                             (6, pytest.approx(records[1]["val_acc1"]))]
    assert [s for s, _ in tensorboard_scalars(run / "tb", "train/loss_running")] == [1, 2, 3, 4, 5, 6]


def test_a_tracker_gone_at_start_or_mid_run_costs_one_warning_and_never_the_run(data, tmp_path):
    server, uri = start_mlflow_server(tmp_path / "server")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = tmp_path / "run"
    try:
        proc = start([*folder_args(data), *TINY_RUN, "trainer.epochs=4", "logger=[mlflow]",
                      f"logger.mlflow.tracking_uri={uri}", "+logger.dead.name=mlflow",
                      f"+logger.dead.tracking_uri={dead}", f"hydra.run.dir={run}"], tmp_path)
        mlflow, deadline, logged = client(uri), time.monotonic() + 300, []
        while not logged:  # until epoch 0 is in MLflow
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
            try:
                run_id = json.loads((run / "summary.json").read_text())["loggers"]["mlflow"]["run_id"]
            except (OSError, ValueError, KeyError):  # not written yet
                continue
            logged = mlflow_history(mlflow, run_id, "val_acc1")
        assert [s for s, _ in logged] == [0]
    finally:
        stop_mlflow_server(server)  # mid-run: epoch 0 is logged, three to go
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Retrying" not in stdout + stderr  # urllib3's own warning for each retry is not said
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["epoch"] for r in read_metrics(run)] == [0, 1, 2, 3]
    warnings = [line for line in (run / "train.log").read_text().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, warnings  # one per tracker
    assert warnings[0].startswith("warning: logger dead failed in start (")
    assert warnings[1].startswith("warning: logger mlflow failed in log_step (")
    assert all(w.endswith("training goes on without it, and metrics.jsonl keeps every epoch") for w in warnings)
    assert "mlflow" not in summary["loggers"]


@pytest.mark.parametrize("package", ["mlflow"])  # wandb's extra is checked by the same lines
def test_without_the_extra_installed_one_line_names_it(data, tmp_path, package):
    shim = tmp_path / "shim"  # on the path first: `import <package>` fails as if it were not installed
    shim.mkdir()
    (shim / f"{package}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{package}'\", name='{package}')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    result = run_cli("train", *folder_args(data), *TINY_RUN, f"logger=[tensorboard,{package}]", f"hydra.run.dir={run}",
                     cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"mixtrain: error: logger={package} needs the {package} package, which cannot be imported (No module named "
        f"'{package}'): pip install \"mixtrain[{package}]\""]
    assert not run.exists()  # nothing written


def test_trackers_are_imported_only_when_chosen(data, tmp_path):
    script = f"""
import sys
from helpers import make_config
from mixtrain.loggers import create_loggers
from mixtrain.train.training import fit

trackers = ("tensorboard", "mlflow")  # (wandb: timm imports it wherever it is installed, any timm user pays it)
cfg = make_config("dataset=imagefolder", "dataset.root={data}", *{TINY_RUN!r}, "logger=[tensorboard,csv,mlflow,wandb]")
assert sorted(cfg.logger) == ["csv", "mlflow", "tensorboard", "wandb"]
print("composed:", [m for m in trackers if m in sys.modules])
fit(make_config("dataset=imagefolder", "dataset.root={data}", *{TINY_RUN!r}, "logger=[]"), __import__("pathlib").Path({str(tmp_path / 'run')!r}))
print("trained:", [m for m in trackers if m in sys.modules])
create_loggers({{"m": cfg.logger["mlflow"]}})
print("chosen:", [m for m in trackers if m in sys.modules])
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in out.stdout.splitlines() if line.startswith(("composed:", "trained:", "chosen:"))]
    assert said == ["composed: []", "trained: []", "chosen: ['mlflow']"]
    run = tmp_path / "run"
    assert (run / "metrics.jsonl").is_file() and not (run / "tb").exists()  # logger=[]: no TensorBoard
    assert checkpoint.load(run / "last.pt")["parts"]["loggers"] == {}


def test_under_torchrun_only_rank_0_logs(data, mlflow_uri, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mixtrain",
           "train", *folder_args(data), *TINY_RUN, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={mlflow_uri}",
           "logger.mlflow.experiment_name=ddp", f"hydra.run.dir={run}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow = client(mlflow_uri)
    (tracked,) = mlflow.search_runs([mlflow.get_experiment_by_name("ddp").experiment_id])  # one run, not one a rank
    records = read_metrics(run)
    assert mlflow_history(mlflow, tracked.info.run_id, "val_acc1") == [(r["epoch"], r["val_acc1"]) for r in records]
    with open(run / "metrics.csv", newline="") as f:
        assert [float(row["val_acc1"]) for row in csv.DictReader(f)] == [r["val_acc1"] for r in records]


# --------------------------------------------------------------------------- the group's config


def test_the_logger_group_takes_a_list_and_its_errors_are_one_line_read_from_the_registry():
    from helpers import compose_config

    from mixtrain.config import asdict, config_from_dict, options
    from mixtrain.errors import MixtrainError
    from mixtrain.loggers import CsvConfig, CustomLoggerConfig, MlflowConfig, TensorBoardConfig, create_loggers

    assert make_config().logger == {"tensorboard": TensorBoardConfig()}  # the default: today's TensorBoard
    assert make_config("logger=[]").logger == {}
    assert make_config("logger=csv").logger == {"csv": CsvConfig()}
    both = make_config("logger=[tensorboard,mlflow]", "logger.mlflow.experiment_name=x").logger
    assert both == {"tensorboard": TensorBoardConfig(), "mlflow": MlflowConfig(experiment_name="x")}
    # A node of your own without a schema is read by its keys: a class by _target_, its arguments in kwargs.
    mine = make_config("+logger.mine._target_=my_pkg.Logger", "+logger.mine.kwargs.every=2").logger["mine"]
    assert mine == CustomLoggerConfig(_target_="my_pkg.Logger", kwargs={"every": 2})

    names = ", ".join(sorted(options("logger")))
    with pytest.raises(MixtrainError, match=f"^unknown logger 'foo': choose one of {names}$"):
        from mixtrain.options import compose

        compose("train", ["logger=[tensorboard,foo]"])
    with pytest.raises(MixtrainError, match=f"^logger.mine is not a logger: choose from {names}, or name a class"):
        make_config("+logger.mine.every=2")
    with pytest.raises(MixtrainError, match=r"^logger.wandb.mode must be one of online, offline, disabled \(got 'cloud'\)"):
        make_config("logger=wandb", "logger.wandb.mode=cloud")
    with pytest.raises(MixtrainError, match=r"^logger.mine._target_='no_such_pkg.Logger' cannot be imported"):
        create_loggers({"mine": CustomLoggerConfig(_target_="no_such_pkg.Logger")})
    with pytest.raises(MixtrainError, match=r"^mixtrain.loggers.csv_file.CsvLogger\(\*\*logger.mine.kwargs\) failed"):
        create_loggers({"mine": CustomLoggerConfig(_target_="mixtrain.loggers.csv_file.CsvLogger", kwargs={"x": 1})})
    assert compose_config("logger=[csv,wandb]").logger.keys() == {"csv", "wandb"}

    # A saved config (a checkpoint's, summary.json's) keeps its loggers as data: a class of your own
    # stays a name, never imported; a kind this process has not registered is left out.
    saved = asdict(make_config("logger=[tensorboard,custom]", "logger.custom._target_=no_such_pkg.Logger"))
    assert config_from_dict(saved, "a saved config").logger["custom"] == CustomLoggerConfig(_target_="no_such_pkg.Logger")
    saved["logger"]["theirs"] = {"name": "their_tracker", "url": "x"}
    assert set(config_from_dict(saved, "a saved config").logger) == {"tensorboard", "custom"}
