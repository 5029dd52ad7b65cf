"""``mixtrain <command> [args]``: pops the command and hands the rest to its entry point.

Hydra has no subcommands, so each Hydra command is its own ``@hydra.main`` function,
called with ``sys.argv`` rewritten to hold only that command's overrides. Before Hydra
starts, the overrides are composed and validated (every combination of a multirun
sweep), so a bad value stops everything with one line and exit code 2.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

from mixtrain import distributed
from mixtrain.config import SCHEMAS, config_dir, debug_enabled, describe_config_error, register_configs, to_object
from mixtrain.errors import EXIT_USAGE, MixtrainError, RunStopped
from mixtrain.files import RUN_FILES

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

`mixtrain <command> --help` shows the config groups and the composed config;
`mixtrain train --cfg job` prints the config a run would use.
"""


def say(message: str) -> None:
    """One line on stderr (from rank 0 only, under torchrun)."""
    if distributed.context().is_main:
        sys.stderr.write(f"mixtrain: {message}\n")


def fail(message: str) -> int:
    say(f"error: {message}")
    return EXIT_USAGE


# --------------------------------------------------------------------------- validation before Hydra


def _hydra_args(args: List[str]):
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(args)


def check_overrides(config_name: str, overrides: List[str], multirun: bool) -> list:
    """Compose and validate the config (each job of a sweep); raise MixtrainError if bad.

    Returns the composed configs (with their ``hydra`` node), one per job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name=f"check_{config_name}"):
        jobs = [overrides]
        if multirun:
            # With the config loader, a glob sweep (recipe='glob(*)') expands to the group's options.
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            try:
                parsed = parser.parse_overrides(overrides)
            except Exception as ex:  # a malformed override
                raise MixtrainError(describe_config_error(ex)) from None
            if all(not o.is_sweep_override() or o.is_discrete_sweep() for o in parsed):
                jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
            else:  # a range/interval sweep for a sweeper plugin: check the fixed part only
                jobs = [[o.input_line for o in parsed if not o.is_sweep_override()]]
            if not jobs:
                raise MixtrainError("the sweep has no jobs (a glob(...) that matches no option?): "
                                    "check the group's options with `mixtrain train --help`")
        composed = []
        for job in jobs:
            try:
                cfg = compose(config_name, overrides=job, return_hydra_config=True)
            except Exception as ex:  # Hydra and OmegaConf raise many types; all are config errors here
                raise MixtrainError(describe_config_error(ex, _base_config(config_name, job))) from None
            hydra_node = cfg.hydra
            with open_dict(cfg):
                del cfg["hydra"]
            to_object(cfg)
            composed.append((cfg, hydra_node))
    return composed


def _base_config(config_name: str, overrides: List[str]):
    """The config with only the group choices of ``overrides`` (to suggest keys that exist)."""
    from hydra import compose

    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in (*SCHEMAS, "trainer", "recipe")]
    try:
        return compose(config_name, overrides=groups)
    except Exception:
        return None


# --------------------------------------------------------------------------- resume


def resume_overrides(overrides: List[str]) -> List[str]:
    """For ``resume=PATH``: the original run's overrides first, and Hydra pointed at its dir.

    The run continues in its own directory; Hydra's files for this invocation go to
    ``.hydra/resume-<time>`` so the original ``.hydra/`` stays as it was.
    """
    from omegaconf import OmegaConf

    from mixtrain.checkpoint import checkpoint_path

    given = [o for o in overrides if o.startswith("resume=")]
    if not given:
        return overrides
    ckpt = checkpoint_path(given[-1].split("=", 1)[1]).resolve()
    run_dir = ckpt.parent
    original_file = run_dir / ".hydra" / "overrides.yaml"
    original = [str(o) for o in OmegaConf.load(original_file)] if original_file.is_file() else []
    original = [o for o in original if not o.startswith(("resume=", "hydra."))]
    rest = [o for o in overrides if not o.startswith("resume=")]
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return [*original, *rest, f"resume={ckpt}", f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resume-{stamp}"]


# --------------------------------------------------------------------------- commands


def _train_task(cfg) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mixtrain.engine import fit

    try:
        summary = fit(to_object(cfg), Path(HydraConfig.get().runtime.output_dir))
    except MixtrainError as ex:
        if debug_enabled():
            raise
        raise SystemExit(fail(str(ex))) from None
    except RunStopped as ex:
        if debug_enabled():
            raise
        say(str(ex))
        # A diverged job of a sweep is recorded (summary.json says failed) and the sweep goes
        # on; a signal stops everything.
        if ex.exit_code > 128 or HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(ex.exit_code) from None
        return float("nan")
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


def _preview_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mixtrain.data import LoaderOptions, open_split, resolve_workers
    from mixtrain.precision import resolve_device
    from mixtrain.preview import mixed_batch_grid, write_png

    try:
        run = to_object(cfg)
        options = LoaderOptions(run.trainer.batch_size, resolve_device(run.trainer.device),
                                resolve_workers(run.trainer.num_workers), run.trainer.channels_last, run.seed)
        train = open_split(run.dataset, "train", True, options)
        grid = mixed_batch_grid(train.loader, train.classes, run.augment, run.dataset, run.trainer.epochs, run.seed)
    except MixtrainError as ex:
        if debug_enabled():
            raise
        raise SystemExit(fail(str(ex))) from None
    path = write_png(grid, Path(HydraConfig.get().runtime.output_dir) / "preview.png")
    print(path)


def torchrun_overrides(composed: list, multirun: bool) -> List[str]:
    """Join the torchrun process group; ranks above 0 write no Hydra files or logs.

    (Every rank uses rank 0's run dir: see :func:`fixed_run_dir`.)
    """
    if multirun:
        raise MixtrainError("torchrun runs one training job; run sweeps with a Hydra launcher "
                            "(hydra/launcher=joblib or submitit_slurm), each job on its own GPUs")
    if distributed.init(composed[0][0].trainer.device).is_main:
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def fixed_run_dir(hydra_node) -> Path:
    """The run dir, resolved once: Hydra resolves ``${now:...}`` again in every process (and a
    second later it may name another dir), so the command passes this one to Hydra. Under
    torchrun rank 0 resolves it and sends it to the others."""
    ctx = distributed.context()
    run_dir = str(hydra_node.run.dir) if ctx.is_main else None
    return Path(distributed.broadcast_object(run_dir))


# The files that show a command has already written into a dir.
OUTPUTS = {"train": RUN_FILES, "eval": ("eval.json",), "preview": ("preview.png",)}


def check_run_dir(run_dir: Path, command: str, resuming: bool) -> None:
    """Refuse, before Hydra writes a file, a run dir that holds results or cannot be written."""
    taken = [name for name in OUTPUTS[command] if (run_dir / name).exists()]
    if taken and not resuming:
        fix = f", or continue it with resume={run_dir}" if command == "train" else ""
        raise MixtrainError(f"{run_dir} already holds {'a run' if command == 'train' else taken[0]}: "
                            f"pick another hydra.run.dir{fix}")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        raise MixtrainError(f"cannot write the run dir {run_dir}: {existing} {why}; pick another hydra.run.dir")


def first_missing(path: Path) -> Optional[Path]:
    """The topmost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def remove_hydra_files(run_dir: Path, created: Optional[Path], subdir: Optional[Path]) -> None:
    """After a refused command, take back what Hydra wrote for it: the folders it made (if they
    hold nothing else), or in an existing run dir the Hydra subfolder it added."""
    if created is not None:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
            shutil.rmtree(run_dir, ignore_errors=True)
            folder = run_dir.parent
            while folder != created.parent and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    elif subdir is not None:
        shutil.rmtree(subdir, ignore_errors=True)


def _eval_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console

    from mixtrain.evaluation import dataset_override_keys, evaluate_checkpoint, print_report

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    console = Console(width=None if Console().is_terminal else 120)
    try:
        report = evaluate_checkpoint(to_object(cfg), out_dir, dataset_override_keys(hydra_cfg.overrides.task), console)
    except MixtrainError as ex:
        if debug_enabled():
            raise
        raise SystemExit(fail(str(ex))) from None
    print_report(report, out_dir, console)


def run_hydra_command(command: str, task: Callable, config_name: str, args: List[str]) -> int:
    import hydra

    parsed = _hydra_args(args)
    informational = parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion
    overrides = list(parsed.overrides)
    if not informational:
        rewritten = {"train": resume_overrides, "eval": _eval_overrides}.get(command, lambda o: o)(overrides)
        if rewritten is not overrides:
            args = [a for a in args if a not in overrides] + rewritten
            overrides = rewritten
    if command == "preview" and not any(o.startswith("hydra.run.dir=") for o in overrides):
        args = [*args, "hydra.run.dir=outputs/preview/${now:%Y-%m-%d}/${now:%H-%M-%S}"]
        overrides = [*overrides, args[-1]]
    run_dir = None
    if not informational:
        composed = check_overrides(config_name, overrides, parsed.multirun)
        if command == "train" and distributed.launched_by_torchrun():
            args = [*args, *torchrun_overrides(composed, parsed.multirun)]
        if not parsed.multirun:
            from mixtrain.evaluation import quote_override

            hydra_node = composed[0][1]
            run_dir = fixed_run_dir(hydra_node)
            check_run_dir(run_dir, command, any(o.startswith("resume=") for o in overrides))
            args = [*args, f"hydra.run.dir={quote_override(run_dir)}"]
            created = first_missing(run_dir)
            # What Hydra will make for its files in an existing run dir (resume: .hydra/resume-<time>).
            subdir = first_missing(run_dir / str(hydra_node.output_subdir)) if hydra_node.output_subdir else None
    main = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"mixtrain {command}", *args]
    try:
        main()
    except SystemExit as ex:  # a task's one-line refusal, or Hydra's own exit
        if run_dir is not None and ex.code == EXIT_USAGE and distributed.context().is_main:
            remove_hydra_files(run_dir, created, subdir)
        return ex.code if isinstance(ex.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def _eval_overrides(overrides: List[str]) -> List[str]:
    from mixtrain.evaluation import eval_overrides

    return eval_overrides(overrides)


def composed_command(config_name: str, module: str, function: str) -> Callable[[List[str]], int]:
    """A ``key=value`` command that needs no run dir: compose its config once, validate it, run it."""
    def run(args: List[str]) -> int:
        if args and args[0] in ("-h", "--help"):
            print(f"usage: mixtrain {config_name} key=value ... (keys: mixtrain/config.py, {config_name.title()}Config)")
            return 0
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name=config_name):
            try:
                cfg = compose(config_name, overrides=list(args))
            except Exception as ex:  # Hydra and OmegaConf raise many types; all are config errors here
                raise MixtrainError(describe_config_error(ex)) from None
        getattr(importlib.import_module(f"mixtrain.{module}"), function)(to_object(cfg))
        return 0

    return run


def plain_command(module: str) -> Callable[[List[str]], int]:
    """A command that is not a Hydra app (``mixtrain.<module>.main(args)``), imported when run."""
    return lambda args: importlib.import_module(f"mixtrain.{module}").main(args)


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "train": lambda args: run_hydra_command("train", _train_task, "train", args),
    "preview": lambda args: run_hydra_command("preview", _preview_task, "train", args),
    "eval": lambda args: run_hydra_command("eval", _eval_task, "eval", args),
    "compare": plain_command("compare"),  # composes one eval config per run itself
    "predict": composed_command("predict", "inference", "predict"),
    "export": composed_command("export", "export", "export"),
    "recipes": plain_command("recipes"),
    "report": plain_command("report"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else EXIT_USAGE
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
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, still without a traceback
        if debug_enabled():
            traceback.print_exc()
        say("interrupted")
        return 128 + signal.SIGINT
    finally:
        distributed.shutdown()


def entry_point() -> None:
    sys.exit(main())
