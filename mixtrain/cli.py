"""``mixtrain <command> [args]``: pops the command and hands the rest to its entry point.

``train``, ``preview`` and ``eval`` are Hydra tasks, run by :mod:`mixtrain.runs.launch`
(validated before anything is written, composed once); the other commands compose
their own config or take plain arguments.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import re
import signal
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version as installed
from pathlib import Path
from typing import Callable, Dict, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

import mixtrain
from mixtrain import layout
from mixtrain.config import debug_enabled, to_object
from mixtrain.errors import EXIT_USAGE, MixtrainError, RunStopped, environment_error, fail, say
from mixtrain.files import release_claims, release_dir
from mixtrain.runtime import distributed

# Each command imports what it runs when it runs: the registries and the training stack import
# torchvision (2 s more, measured with `python -X importtime -m mixtrain --version`), which
# `mixtrain --version`, `--help` and the plain commands do not need.

USAGE = """usage: mixtrain <command> [overrides]

commands:
  train     train a classifier          mixtrain train [dataset=... model=... augment=... key=value ...]
            multirun sweeps             mixtrain train -m optim.lr=0.05,0.1
            continue a run              mixtrain train resume=outputs/<date>/<time>
  preview   a PNG of one mixed batch    mixtrain preview augment=cutmix augment.mode=elem
  eval      calibration, temperature    mixtrain eval checkpoint=outputs/<date>/<time> [dataset.root=...]
            scaling, FGSM robustness
  compare   runs side by side           mixtrain compare RUN_A RUN_B ... [heldout=0.5 fgsm_eps=[2,8]]
  predict   classify new images         mixtrain predict checkpoint=RUN inputs=DIR_OR_GLOB [out=preds.csv topk=5]
  export    for other tools             mixtrain export checkpoint=RUN format=safetensors|onnx|torchscript
  recipes   the named experiments       mixtrain recipes; then mixtrain train recipe=NAME
  report    summarize runs and sweeps   mixtrain report outputs/multirun/<date>/<time> [--out DIR]
  shards    a folder as WebDataset      mixtrain shards ROOT OUT [--per-shard 1000]; then dataset=webdataset

`mixtrain <command> --help` shows the config groups and the composed config;
`mixtrain train --cfg job` prints the config a run would use; `mixtrain --version`.
train, preview and eval take every flag of a Hydra app (-cd DIR, -cn NAME, -m, --cfg, -sc, ...).
"""


# --------------------------------------------------------------------------- commands


def task(function: Callable) -> Callable:
    """A Hydra task that marks what escapes it: a bug keeps its traceback, while an error of
    Hydra's own front end (a bad override) becomes one line."""
    @functools.wraps(function)
    def run(cfg):
        try:
            return function(cfg)
        except Exception as ex:
            ex.raised_by_task = True
            raise

    return run


def output_dir(command: str, cfg) -> Path:
    """This job's dir, which this process holds (the Guard claimed it; a sweep's job claims its own)."""
    from mixtrain.runs import claims  # imported by now: this runs inside launch's Hydra command

    return claims.job_dir(command, cfg)


def in_sweep() -> bool:

    return HydraConfig.get().mode == RunMode.MULTIRUN


@task
def _train_task(cfg) -> float:
    from mixtrain.train.training import fit  # start-up: see the note at the imports

    out = output_dir("train", cfg)  # first: a sweep's job writes its Hydra files there once it holds it
    try:
        summary = fit(to_object(cfg), out, options=dict(HydraConfig.get().runtime.choices))
    except RunStopped as ex:
        # A diverged job of a sweep is recorded (summary.json says failed) and the sweep goes
        # on; a signal stops everything.
        if not in_sweep():
            raise
        if ex.exit_code > 128:
            say(str(ex))
            raise SystemExit(ex.exit_code) from None
        say(str(ex))
        return float("nan")
    finally:
        if in_sweep():  # a job that has ended is free to evaluate, calibrate or resume while the sweep goes on
            release_dir(out)
    return objective_value(summary, cfg.objective, ema=cfg.trainer.ema.enabled and cfg.trainer.ema.select_best)


def objective_value(summary: dict, key: str, ema: bool = False) -> float:
    """What a job returns to Hydra's sweeper: ``summary[key]`` of a completed run, else NaN.

    A run that did not complete, or whose value is not finite, must never look like a
    good result to a sweeper: Optuna records a NaN as a failed trial. With
    ``trainer.ema.select_best`` the EMA weights' value of the same metric is returned.
    """
    if ema and key.replace("val_", "ema_val_", 1) in summary:
        key = key.replace("val_", "ema_val_", 1)
    value = summary.get(key)
    if summary.get("status") != "completed" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return float("nan")
    return float(value)


@task
def _preview_task(cfg) -> None:
    # start-up: see the note at the imports
    from mixtrain.data import LoaderOptions, open_split, resolve_workers
    from mixtrain.mixing.preview import mixed_batch_grid, write_png
    from mixtrain.runtime.precision import resolve_device

    out = output_dir("preview", cfg)
    run = to_object(cfg)
    options = LoaderOptions(run.trainer.batch_size, resolve_device(run.trainer.device),
                            resolve_workers(run.trainer.num_workers), run.trainer.channels_last, run.seed)
    train = open_split(run.dataset, "train", True, options)
    grid = mixed_batch_grid(train.loader, train.classes, run.augment, run.dataset, run.trainer.epochs, run.seed)
    print(write_png(grid, out / layout.PREVIEW))


@task
def _eval_task(cfg) -> None:
    # start-up: see the note at the imports
    from rich.console import Console

    from mixtrain.evaluate.evaluation import dataset_override_keys, evaluate_checkpoint
    from mixtrain.evaluate.tables import print_report

    out = output_dir("eval", cfg)
    console = Console(width=None if Console().is_terminal else 120)
    keys = dataset_override_keys(HydraConfig.get().overrides.task)
    print_report(evaluate_checkpoint(to_object(cfg), out, keys, console), out, console)


def composed_command(config_name: str, module: str, function: str) -> Callable[[List[str]], int]:
    """A ``key=value`` command that needs no run dir: compose its config once, validate it, run it."""
    def run(args: List[str]) -> int:
        if args and args[0] in ("-h", "--help"):
            print(f"usage: mixtrain {config_name} key=value ... (keys: mixtrain/config/commands.py, {config_name.title()}Config)")
            return 0
        from mixtrain.options import compose  # start-up: see the note at the imports

        cfg = compose(config_name, list(args))
        getattr(importlib.import_module(f"mixtrain.{module}"), function)(to_object(cfg))
        return 0

    return run


def plain_command(module: str) -> Callable[[List[str]], int]:
    """A command that is not a Hydra app (``mixtrain.<module>.main(args)``), imported when run."""
    return lambda args: importlib.import_module(f"mixtrain.{module}").main(args)


def hydra_command(command: str, task_function: Callable, config_name: str) -> Callable[[List[str]], int]:
    """A Hydra app: ``hydra.main`` on the command line, whole (:mod:`mixtrain.runs.launch`)."""
    def run(args: List[str]) -> int:
        from mixtrain.runs.launch import run_hydra_command  # start-up: see the note at the imports

        return run_hydra_command(command, task_function, config_name, args)

    return run


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "train": hydra_command("train", _train_task, "train"),
    "preview": hydra_command("preview", _preview_task, "train"),
    "eval": hydra_command("eval", _eval_task, "eval"),
    "compare": plain_command("runs.compare"),  # composes one eval config per run itself
    "predict": composed_command("predict", "inference.predict", "predict"),
    "export": composed_command("export", "inference.export", "export"),
    "recipes": plain_command("runs.recipes"),
    "report": plain_command("runs.report"),
    "shards": plain_command("data.shard_writer"),
}


def version() -> str:

    parts = []
    for name in ("hydra-core", "omegaconf", "torch", "torchvision", "timm"):
        try:
            parts.append(f"{name} {installed(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return f"mixtrain {mixtrain.__version__} ({', '.join(parts)})"


HYDRA_COMMANDS = ("train", "preview", "eval")


def complete(args: List[str]) -> int:
    """``mixtrain -sc query=SHELL``, as the script of ``mixtrain train -sc install=bash`` calls it:
    the command names while the first word is typed, then Hydra's completion of that command's
    config (its line passed on without the command word)."""

    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    typing_command = len(words) < 2 or (len(words) == 2 and not line.endswith(" "))
    if typing_command:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
        return 0
    command = words[1]
    if command not in HYDRA_COMMANDS:
        return 0
    os.environ["COMP_LINE"] = re.sub(rf"^(\s*\S+)\s+{re.escape(command)}", r"\1", line, count=1)
    return COMMANDS[command](["--shell-completion", *args])


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V"):
        print(version())
        return 0
    from mixtrain.options import register_configs  # start-up: see the note at the imports

    if argv[0] in ("-sc", "--shell-completion"):
        register_configs()
        return complete(argv[1:])
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        return fail(f"unknown command '{command}': use one of {', '.join(COMMANDS)} (see `mixtrain --help`)")
    register_configs()
    try:
        return COMMANDS[command](args)
    except MixtrainError as ex:
        if debug_enabled():
            traceback.print_exc()
        return fail(str(ex))
    except RunStopped as ex:  # a run that stopped on purpose (Guard off: Hydra re-raised it)
        say(str(ex))
        return ex.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, still without a traceback
        if debug_enabled():
            traceback.print_exc()
        say("interrupted")
        return 128 + signal.SIGINT
    except OSError as ex:  # a full disk, a file size limit, a path longer than the OS takes: not a bug
        line = environment_error(ex)
        if line is None:
            raise
        if debug_enabled():
            traceback.print_exc()
        return fail(line)
    finally:
        distributed.shutdown()
        release_claims()  # the command is over: its dirs are free (a process ending frees them anyway)


def entry_point() -> None:
    sys.exit(main())
