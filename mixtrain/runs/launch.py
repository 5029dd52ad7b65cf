"""How a Hydra command becomes a run: read its command line, compose and validate its config
(every job of a sweep) before anything is written, guard the run dir, and run the task once
on that config as Hydra's run mode does. A sweep and Hydra's informational flags go through
``hydra.main``.

Hydra has no subcommands, so each command (``train``, ``preview``, ``eval``) is a task
function run here with that command's overrides.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from mixtrain.config import SCHEMAS, config_dir, describe_config_error, to_object
from mixtrain.config.overrides import hydra_args_parser, sweep_jobs
from mixtrain.errors import EXIT_USAGE, MixtrainError
from mixtrain.files import RUN_FILES
from mixtrain.train import distributed


def _hydra_args(args: List[str]):
    return hydra_args_parser().parse_args(args)


def check_overrides(config_name: str, overrides: List[str], multirun: bool) -> list:
    """Compose and validate the config (each job of a sweep); raise MixtrainError if bad.

    Returns the composed configs, each with its ``hydra`` node, one per job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

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
                jobs = sweep_jobs(parsed)
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
            job = cfg.copy()
            with open_dict(job):
                del job["hydra"]
            to_object(job)
            composed.append(cfg)
    return composed


def _base_config(config_name: str, overrides: List[str]):
    """The config with only the group choices of ``overrides`` (to suggest keys that exist)."""
    from hydra import compose

    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in (*SCHEMAS, "trainer", "recipe")]
    try:
        return compose(config_name, overrides=groups)
    except Exception:
        return None


def resume_overrides(overrides: List[str]) -> List[str]:
    """For ``resume=PATH``: the original run's overrides first, and Hydra pointed at its dir.

    The run continues in its own directory; Hydra's files for this invocation go to
    ``.hydra/resume-<time>`` so the original ``.hydra/`` stays as it was.
    """
    from omegaconf import OmegaConf

    from mixtrain.train.checkpoint import checkpoint_path

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


def join_torchrun(composed: list, multirun: bool) -> bool:
    """Join the torchrun process group; return whether this is rank 0 (the rank that writes
    Hydra's files and logs). Every rank uses rank 0's run dir: see :func:`fixed_run_dir`."""
    if multirun:
        raise MixtrainError("torchrun runs one training job; run sweeps with a Hydra launcher "
                            "(hydra/launcher=joblib or submitit_slurm), each job on its own GPUs")
    return distributed.init(composed[0].trainer.device).is_main


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


def run_hydra_command(command: str, task: Callable, config_name: str, args: List[str]) -> int:
    """Validate, then run: one job on the config composed to validate it; a sweep, or Hydra's
    informational flags (``--help``, ``--cfg``, ``--info``), through ``hydra.main``."""
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
    if informational:
        return run_hydra_main(task, config_name, command, args)
    composed = check_overrides(config_name, overrides, parsed.multirun)
    if command == "train" and distributed.launched_by_torchrun():
        main_rank = join_torchrun(composed, parsed.multirun)
    else:
        main_rank = True
    if parsed.multirun or parsed.cfg:  # a sweep: Hydra's launcher composes each job again, in the job's process
        return run_hydra_main(task, config_name, command, args)
    return run_once(task, composed[0], command, main_rank, any(o.startswith("resume=") for o in overrides))


def run_hydra_main(task: Callable, config_name: str, command: str, args: List[str]) -> int:
    import hydra

    main = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"mixtrain {command}", *args]
    try:
        main()
    except SystemExit as ex:  # a task's one-line refusal, or Hydra's own exit
        return ex.code if isinstance(ex.code, int) else 1
    finally:
        sys.argv = saved
    return 0


class JobCallbacks:
    """The ``hydra.callbacks`` of a config (``hydra.experimental.callback.Callback`` objects),
    called at the points Hydra's run mode calls them."""

    def __init__(self, cfg) -> None:
        from hydra.utils import instantiate

        self.callbacks = [instantiate(node) for node in (cfg.hydra.callbacks or {}).values()]

    def __getattr__(self, event: str) -> Callable:
        if not event.startswith("on_"):
            raise AttributeError(event)
        return lambda **kwargs: [getattr(cb, event)(**kwargs) for cb in self.callbacks]


def run_once(task: Callable, cfg, command: str, main_rank: bool, resuming: bool) -> int:
    """Run ``task`` on ``cfg`` (composed once, with its ``hydra`` node) as Hydra's run mode does:
    the run dir, ``.hydra/`` (rank 0 only), logging, callbacks. What Hydra wrote is taken back
    if the command is refused."""
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict, read_write

    run_dir = fixed_run_dir(cfg.hydra)
    check_run_dir(run_dir, command, resuming)
    created = first_missing(run_dir)
    # What Hydra will make for its files in an existing run dir (resume: .hydra/resume-<time>).
    subdir = first_missing(run_dir / str(cfg.hydra.output_subdir)) if cfg.hydra.output_subdir else None
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.mode = RunMode.RUN
        if not main_rank:  # ranks above 0 write no Hydra files
            cfg.hydra.output_subdir = None
    if main_rank:
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = JobCallbacks(cfg)
    try:
        callbacks.on_run_start(config=cfg, config_name=cfg.hydra.job.config_name)
        ret = run_job(task_function=task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                      hydra_context=HydraContext(config_loader=None, callbacks=callbacks), configure_logging=main_rank)
        callbacks.on_run_end(config=cfg, config_name=cfg.hydra.job.config_name, job_return=ret)
        ret.return_value  # re-raises what the task raised
    except SystemExit as ex:  # a task's one-line refusal
        if ex.code == EXIT_USAGE and main_rank:
            remove_hydra_files(run_dir, created, subdir)
        return ex.code if isinstance(ex.code, int) else 1
    return 0


def _eval_overrides(overrides: List[str]) -> List[str]:
    from mixtrain.evaluate.evaluation import eval_overrides

    return eval_overrides(overrides)
