"""Loggers' cost: each logger of the ``logger`` group against ``logger=[]`` on the default run.

The default run (ResNet-20 on the bundled CIFAR-10 subset, batch 128, ``log_every`` 50: one sync
point an epoch, as in the full default run) for ``--epochs`` short epochs (``--steps`` batches each,
the full 1,000-image evaluation and a checkpoint every epoch), once per logger in each round, the
loggers taking turns round by round (the machine is shared and noisy). Reported per logger:

- the median epoch time (epoch 0 aside: start-up) and its ratio to ``logger=[]``'s in the same rounds
  (what the logger costs an epoch, whatever runs it: W&B's own process included);
- the time inside the logger's calls per epoch (log_step, log_epoch, log_image), measured around
  each call, and the CPU time of the calling thread in them;
- the CPU time per epoch of the processes this one started (W&B's wandb-core service logs from its
  own process: the calls only hand it the numbers), read from /proc before and after each run;
- the time of its start and finish, once per run (imports, the tracker's run, the files uploaded).

On a shared machine the epoch time's ratio carries the other jobs' noise; the times measured in the
calls and the CPU times do not, and they are what a logger adds to an epoch.

MLflow logs to its default local store (``sqlite:///mlflow.db`` in a temp dir), or to
``--mlflow-uri``; W&B runs offline.

    python bench/trackers.py [--rounds 5] [--epochs 3] [--steps 5] [--mlflow-uri http://127.0.0.1:5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from mixtrain.config import config_dir, to_object
from mixtrain.options import register_configs
from mixtrain.train.training import Training

LOGGERS = {"none": "[]", "tensorboard": "[tensorboard]", "csv": "[csv]", "mlflow": "[mlflow]", "wandb": "[wandb]"}
EPOCH_CALLS = ("log_step", "log_epoch", "log_image")


class Timed:
    """A logger whose calls are timed: per-epoch calls and start/finish apart."""

    def __init__(self, logger, clock: dict) -> None:
        self._logger, self._clock = logger, clock

    def __getattr__(self, name: str):
        method = getattr(self._logger, name)  # AttributeError for a method the logger lacks, as without the wrapper
        if not callable(method):
            return method

        def timed(*args, **kwargs):
            t0, cpu0 = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                key = "epoch" if name in EPOCH_CALLS else name
                self._clock[key] = self._clock.get(key, 0.0) + time.perf_counter() - t0
                self._clock[f"{key}_cpu"] = self._clock.get(f"{key}_cpu", 0.0) + time.thread_time() - cpu0

        return timed


def descendants_cpu() -> float:
    """CPU seconds so far of every live process below this one (Linux /proc)."""
    total, todo, tick = 0.0, [os.getpid()], os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the task ended meanwhile
                pass
        if pid != os.getpid():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except (OSError, IndexError):
                pass
    return total


def one_run(name: str, overrides, work: Path, mlflow_uri) -> dict:
    """Train once with this logger; its epoch times and the time inside its calls."""
    from hydra import compose, initialize_config_dir

    extra = [f"logger.mlflow.tracking_uri={mlflow_uri}"] if name == "mlflow" and mlflow_uri else []
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = to_object(compose("train", overrides=[*overrides, f"logger={LOGGERS[name]}", *extra]))
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"{name}-"))
    training = Training(cfg, run_dir)
    training.monitor.console.quiet = True  # the run's lines would drown the table
    clock: dict = {}
    training.loggers.chosen = {key: Timed(logger, clock) for key, logger in training.loggers.chosen.items()}
    helpers_before = descendants_cpu()
    training.train()
    helpers = descendants_cpu() - helpers_before
    epochs = [r["epoch_time"] for r in training.history[1:]]  # epoch 0 holds the start-up
    n = len(training.history)
    return {"epochs": epochs, "in_calls": clock.get("epoch", 0.0) / n, "cpu_in_calls": clock.get("epoch_cpu", 0.0) / n,
            "helpers_cpu": helpers / n, "start_finish": clock.get("start", 0.0) + clock.get("finish", 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    parser.add_argument("--steps", type=int, default=5, help="training batches per epoch")
    parser.add_argument("--mlflow-uri", default=None, help="an MLflow tracking server (default: a local store)")
    parser.add_argument("--loggers", default=",".join(LOGGERS), help="which to run, comma-separated")
    args = parser.parse_args()
    names = args.loggers.split(",")
    if "none" not in names:
        names.insert(0, "none")

    register_configs()
    overrides = [f"trainer.epochs={args.epochs}", f"trainer.limit_train_batches={args.steps}", "trainer.device=cpu"]
    results = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chdir(work)  # MLflow's default store and W&B's files go here
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # each logger leads a round in turn
            for name in order:
                results[name].append(one_run(name, overrides, work, args.mlflow_uri))
            print(f"round {r + 1}: " + ", ".join(f"{n} {statistics.median(results[n][-1]['epochs']):.2f}s "
                                                 f"({results[n][-1]['in_calls'] * 1e3:.0f} ms in calls)"
                                                 for n in names), flush=True)

    base = statistics.median(t for run in results["none"] for t in run["epochs"])
    print(f"\n{args.rounds} rounds x {args.epochs - 1} timed epochs of {args.steps} steps (batch 128, ResNet-20, "
          f"CIFAR-10 subset, full evaluation and a checkpoint each epoch); MLflow: "
          f"{args.mlflow_uri or 'local sqlite store'}; W&B: offline\n")
    print(f"{'logger':<12} {'epoch s':>8} {'ratio':>6} {'in calls ms/epoch':>18} {'their CPU ms/epoch':>19} "
          f"{'helper CPU ms/epoch':>20} {'start+finish s/run':>19}")
    for name in names:
        epoch = statistics.median(t for run in results[name] for t in run["epochs"])
        calls, cpu, helpers, once = (statistics.median(run[k] for run in results[name])
                                     for k in ("in_calls", "cpu_in_calls", "helpers_cpu", "start_finish"))
        print(f"{name:<12} {epoch:8.2f} {epoch / base:6.3f} {calls * 1e3:18.1f} {cpu * 1e3:19.1f} {helpers * 1e3:20.1f} "
              f"{once:19.2f}")


if __name__ == "__main__":
    main()
