"""``logger=mlflow``: each run an MLflow run, through the ``mlflow`` package (``pip install "mixtrain[mlflow]"``).

The resolved config as params (flattened keys: ``optim.lr``), the overrides as tags
(``override.<key>``), every number of ``metrics.jsonl`` under its name with the epoch as its step,
the step metrics (``train/loss_running``, ...) with the optimizer step as theirs, the run's files at
the end, and its status: FINISHED, FAILED, or KILLED for a stop by a signal.

A sweep's jobs are children of one parent run (MLflow's ``mlflow.parentRunId`` tag), made by the
first job and recorded in the sweep dir (``loggers.json``). A resumed run continues its MLflow run
(its id is in the checkpoint): the steps the tracker already has are not logged again, and the
epochs it lacks (a crash between the checkpoint and the log, a server that was down) are.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from mixtrain import layout
from mixtrain.config.overrides import override_key
from mixtrain.files import write_json_atomic
from mixtrain.loggers.base import FINISHED, Logger, RunInfo, Sweep, finite, register_logger, scalars


@dataclass
class MlflowConfig:
    """MLflow (pip install "mixtrain[mlflow]"): params, metrics, files and status of each run."""

    name: str = "mlflow"  # the kind of logger (a node of the logger group is read by it)
    # The tracking server or store (http://host:5000, sqlite:///path/mlflow.db, ...); null: MLflow's own
    # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current dir, beside outputs/
    tracking_uri: Optional[str] = None
    experiment_name: str = "mixtrain"  # the MLflow experiment of the runs (made on first use)
    run_name: Optional[str] = None  # the run's name in MLflow; null: the run dir's name
    tags: Dict[str, str] = field(default_factory=dict)  # set on the run, beside mixtrain's own (run dir, overrides, sweep)


# A server that does not answer must not hold a run up for long: MLflow retries a request 7 times
# over about 4 minutes by default; here twice over about 3 s (a failed logger is then dropped).
# Set these variables to choose otherwise.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
BATCH = 100  # MLflow's limit of params or tags in one log_batch call (and below its 1000 metrics)


class MlflowLogger(Logger):
    def __init__(self, cfg: MlflowConfig) -> None:
        self.cfg = cfg
        self.client, self.uri, self.run_id, self.experiment_id, self.parent_id = None, None, None, None, None
        self.logged: Dict[str, int] = {}  # metric -> the last step the tracker has (a resumed run's)

    def start(self, run: RunInfo, state: Dict[str, Any]) -> None:
        # mlflow (1 s to import): only when this logger is chosen
        import mlflow
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # urllib3 logs each retry as a warning of its own: a server that is gone says so once, below.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.uri = self.cfg.tracking_uri or mlflow.get_tracking_uri()
        self.client = client = MlflowClient(self.uri)
        present: Dict[str, str] = {}
        if state.get("run_id") and state.get("tracking_uri") == self.uri:
            self.run_id, self.experiment_id = state["run_id"], state["experiment_id"]
            self.parent_id = state.get("parent_run_id")
            client.update_run(self.run_id, status="RUNNING")
            present = client.get_run(self.run_id).data.params
            self.logged = {key: max(m.step for m in client.get_metric_history(self.run_id, key))
                           for key in client.get_run(self.run_id).data.metrics}
        else:
            self.experiment_id = self.experiment(self.cfg.experiment_name)
            tags = {"mixtrain.run_dir": str(run.run_dir), **self.cfg.tags}
            if run.sweep is not None:
                self.parent_id = self.sweep_parent(run.sweep)
                tags.update({"mlflow.parentRunId": self.parent_id, "mixtrain.sweep": str(run.sweep.dir),
                             "mixtrain.sweep_job": str(run.sweep.job)})
            self.run_id = client.create_run(self.experiment_id, run_name=self.cfg.run_name or run.name,
                                            tags=tags).info.run_id
        # Params cannot change in MLflow: a resumed run keeps those it started with, and adds new keys.
        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in run.params.items() if k not in present]
        tags = [RunTag("mixtrain.overrides", " ".join(run.overrides))]
        tags += [RunTag(f"override.{override_key(o)}", o.split("=", 1)[1]) for o in run.overrides if "=" in o]
        for i in range(0, max(len(params), len(tags)), BATCH):
            client.log_batch(self.run_id, params=params[i:i + BATCH], tags=tags[i:i + BATCH])
        for record in run.history:  # what the tracker lacks of the checkpoint's epochs
            self.log_epoch(record, 0)

    def experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException  # with mlflow, in start

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another job of a sweep made it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def sweep_parent(self, sweep: Sweep) -> str:
        """The sweep's parent run in this store and experiment: the first job makes it (and marks it
        FINISHED: it only groups the jobs), the others find it in the sweep dir's record."""
        path, slot = sweep.dir / layout.SWEEP_LOGGERS, f"mlflow {self.uri} {self.experiment_id}"
        with locked(sweep.dir / f".{layout.SWEEP_LOGGERS}.lock"):
            record = json.loads(path.read_text()) if path.is_file() else {}
            if slot not in record:
                parent = self.client.create_run(self.experiment_id, run_name=f"sweep {sweep.dir.name}",
                                                tags={"mixtrain.sweep": str(sweep.dir)}).info.run_id
                self.client.set_terminated(parent, FINISHED)
                record[slot] = parent
                write_json_atomic(path, record)
            return record[slot]

    def log_step(self, metrics: Dict[str, float], step: int) -> None:
        self.log(metrics, step)

    def log_epoch(self, record: Dict[str, Any], step: int) -> None:
        self.log(scalars(record), record["epoch"])

    def log(self, values: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # with mlflow, in start

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items() if step > self.logged.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, summary: Dict[str, Any], artifacts: List[Path]) -> None:
        # The summary's objectives, so MLflow's run table can sort by the best epoch's top-1.
        self.log({f"summary/{k}": summary[k] for k in layout.OBJECTIVES if finite(summary.get(k))},
                 int(summary.get("epochs", 0)))
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)

    def state_dict(self) -> Dict[str, Any]:
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id,
                "parent_run_id": self.parent_id}

    def where(self) -> Dict[str, Any]:
        return {"kind": "mlflow", **self.state_dict(), "experiment": self.cfg.experiment_name,
                "open": ui_command(self.uri)}


def ui_command(uri: str) -> str:
    """How to see a store's runs: its URL for a server, ``mlflow ui`` for a local store."""
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {uri}"


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (made if missing) between this machine's processes: a sweep's jobs."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def report_lines(wheres: List[Dict[str, Any]], files: List[Path]) -> List[str]:
    """For ``mixtrain report``: where the runs are in MLflow; the report's files go to each sweep's
    parent run (under ``report/``)."""
    lines = []
    for uri in sorted({w["tracking_uri"] for w in wheres if w.get("tracking_uri")}):
        runs = [w for w in wheres if w.get("tracking_uri") == uri]
        experiments = ", ".join(sorted({str(w.get("experiment")) for w in runs}))
        line = f"MLflow: {len(runs)} run(s) in experiment {experiments}: {ui_command(uri)}"
        parents = sorted({w["parent_run_id"] for w in runs if w.get("parent_run_id")})
        if parents and files:
            try:
                from mlflow.tracking import MlflowClient  # 1 s to import: only for runs that logged to MLflow

                client = MlflowClient(uri)
                for parent in parents:
                    for path in files:
                        client.log_artifact(parent, str(path), artifact_path="report")
                line += f" (this report is in the sweep's parent run {', '.join(parents)}, under report/)"
            except Exception as ex:  # the server may be gone since: the report stands without it
                line += f" (could not add this report to the parent run: {str(ex).splitlines()[0][:160]})"
        lines.append(line)
    return lines


register_logger("mlflow", MlflowConfig, lambda cfg, key: MlflowLogger(cfg), package="mlflow", extra="mlflow",
                report=report_lines)
