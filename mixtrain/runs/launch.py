"""How a Hydra command becomes a run: mixtrain hands the command line to Hydra whole.

``mixtrain train|preview|eval ARGS`` is ``hydra.main`` on ARGS, as any ``@hydra.main`` app:
every flag (``-cd``, ``-cn``, ``-m``, ``--cfg``, ``-sc``, ``--version``, ...), every mode,
search path, sweeper, launcher and callback is Hydra's own. mixtrain adds one Hydra callback,
:class:`Guard` (registered under ``hydra.callbacks.mixtrain`` in ``conf/train.yaml`` and
``conf/eval.yaml``), which checks each job where Hydra has composed it and before Hydra writes
a file: the config (one line and exit 2 when it is wrong), then the run dir, which it makes and
locks for the life of the process (one writer per dir). Before a sweep of Hydra's basic
sweeper starts, every job is composed (Hydra's own config loader) and checked, and no two may
share a dir; for other sweepers, the fixed part of the config. Hydra writes a job's ``.hydra/``
before any callback sees the job, so each job of a sweep claims its own dir before those files
are written (:mod:`mixtrain.runs.claims`). A ``train resume=`` takes the run's overrides as data
(:mod:`mixtrain.runs.resume`).

Hydra has no subcommands, so each command is a task function with a config of its own.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict, read_write

from mixtrain.artifacts.calibration import claim_calibration
from mixtrain.artifacts.model import resolve_checkpoint
from mixtrain.config import GROUPS, config_dir, debug_enabled, describe_config_error, to_object
from mixtrain.config.overrides import hydra_args_parser, override_key, sweep_jobs
from mixtrain.errors import MixtrainError, RunStopped, environment_error, fail, say
from mixtrain.evaluate.evaluation import eval_overrides
from mixtrain.files import claim_dir, records_in
from mixtrain.runs.claims import (check_writable, claim_run_dir, defer_job_files, remove_hydra_files,
                                  restore_job_files)
from mixtrain.runs.resume import check_replayed, resume_args
from mixtrain.runtime import distributed


# --------------------------------------------------------------------------- the command line


def run_hydra_command(command: str, task: Callable, config_name: str, args: List[str]) -> int:
    """Run ``task`` as ``hydra.main`` does with ``args``; return the exit code.

    Before Hydra starts, two commands rewrite their own overrides (what a user would type
    anyway): ``train resume=RUN`` continues RUN with its original overrides, config name and
    config dir; ``eval dataset.key=...`` names the checkpoint's dataset first.
    """
    parsed = hydra_args_parser().parse_args(args)
    if runs_a_job(parsed):
        args = {"train": resume_args, "eval": eval_args}.get(command, lambda a, p: a)(args, parsed)
        if command == "preview":  # train's config, checked as a preview (the command rides on the Guard)
            args = [*args, "hydra.callbacks.mixtrain.command=preview"]
            if not any(o.startswith("hydra.run.dir=") for o in parsed.overrides):
                args.append("hydra.run.dir=outputs/preview/${now:%Y-%m-%d}/${now:%H-%M-%S}")
    try:
        with hydra_argv(args), full_errors():
            hydra_main(task, config_name)()
    except SystemExit as ex:  # Hydra's own exits (--help, --version), and the Guard's one-line refusals
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    except (MixtrainError, RunStopped):
        raise
    except Exception as ex:
        if getattr(ex, "raised_by_task", False):  # a bug in mixtrain: keep its traceback
            raise
        # Hydra's front end refused the command line (an override, a config, a flag).
        raise MixtrainError(describe_config_error(ex, hint_config(config_name, parsed))) from None
    return 0


def runs_a_job(parsed) -> bool:
    """Whether the command line runs the task (not --help, --cfg, --info, -sc, a rerun)."""
    return not (parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
                or parsed.version or parsed.experimental_rerun)


def hydra_main(task: Callable, config_name: str) -> Callable:

    return hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)


@contextmanager
def hydra_argv(args: List[str]):
    """``sys.argv`` as Hydra reads it; ``mixtrain`` as the program (shell completion binds to it)."""
    saved = sys.argv
    sys.argv = ["mixtrain", *args]
    try:
        yield
    finally:
        sys.argv = saved


@contextmanager
def full_errors():
    """Hydra prints a composition error itself and exits 1 unless HYDRA_FULL_ERROR is set; set,
    the error reaches mixtrain, which says it in one line with exit code 2."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def hint_config(config_name: str, parsed):
    """The config with only the group choices of the command line, composed the way Hydra did (its
    config name and dir), to suggest keys that exist; None when it does not compose."""

    groups = [o for o in parsed.overrides if override_key(o) in (*GROUPS, "trainer", "recipe")]
    if parsed.config_dir:
        groups.append(f"hydra.searchpath=[file://{Path(parsed.config_dir).resolve()}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose(parsed.config_name or config_name, overrides=groups)
    except Exception:  # only a hint: the error itself is said whatever happens here
        return None


def eval_args(args: List[str], parsed) -> List[str]:

    rewritten = eval_overrides(list(parsed.overrides))
    return [a for a in args if a not in parsed.overrides] + rewritten


# --------------------------------------------------------------------------- the Guard


class Guard(Callback):
    """mixtrain's checks, at the points Hydra's run and multirun modes call callbacks.

    A refusal says one line and exits 2 (a callback's exception would only be a warning in
    Hydra): before Hydra writes anything for a job that does not validate or whose dir is taken,
    and after a job whose task refused its input (taking back what Hydra wrote for it).
    """

    def __init__(self, command: str = "train", replayed: Optional[str] = None, given: Sequence[str] = ()) -> None:
        """``command``: the command whose job this is (conf/train.yaml, conf/eval.yaml; preview's is set on its
        command line); ``replayed``, ``given``: ``train resume=``'s run dir and the keys its command line
        passes (:func:`~mixtrain.runs.resume.resume_args`), for :func:`~mixtrain.runs.resume.check_replayed`."""
        self.command = command
        self.replayed = (Path(replayed), list(given)) if replayed else None
        self.created: Optional[Path] = None  # the topmost folder this run made for its run dir
        self.run_dir: Optional[Path] = None
        self.job_files: Optional[str] = None  # a sweep's: the Hydra subdir each job writes once it holds its dir

    def on_run_start(self, config, config_name: Optional[str] = None, **kwargs) -> None:
        with refusals():
            self.run_dir, self.created = prepare_run(config, self.command, self.replayed)

    def on_run_end(self, config, job_return=None, **kwargs) -> None:
        error = getattr(job_return, "_return_value", None)
        if environment_error(error):  # a full disk, a path too long: a refusal like bad input
            error = MixtrainError(environment_error(error))
        if not isinstance(error, (MixtrainError, RunStopped)):
            return
        if debug_enabled():

            traceback.print_exception(error)
        if isinstance(error, RunStopped):
            say(str(error))
            raise SystemExit(error.exit_code)
        if self.run_dir is not None and distributed.context().is_main:
            remove_hydra_files(self.run_dir, self.created, config)
        raise SystemExit(fail(str(error)))

    def on_multirun_start(self, config, config_name: Optional[str] = None, **kwargs) -> None:
        with refusals():
            check_sweep(config, self.command)
            self.job_files = defer_job_files(config)

    def on_job_start(self, config, **kwargs) -> None:
        # In the job's process (a launcher ships this Guard to it), after Hydra made the job's dir
        # and, since on_multirun_start, wrote nothing in it: the job claims it first (claims.job_dir).
        if self.job_files is not None:
            restore_job_files(self.job_files)


@contextmanager
def refusals():
    """A refusal exits 2 with its one line; anything else is a bug in mixtrain: its traceback, exit 1
    (Hydra would turn a callback's exception into a warning and go on unchecked)."""
    try:
        yield
    except MixtrainError as ex:
        raise SystemExit(fail(str(ex))) from None
    except Exception as ex:
        if environment_error(ex):  # a path longer than the OS takes, a full disk: not a bug
            raise SystemExit(fail(environment_error(ex))) from None
        traceback.print_exc()
        raise SystemExit(1) from None


def task_config(cfg):
    """The config a task receives: ``cfg`` without its ``hydra`` node."""

    job = cfg.copy()
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


@contextmanager
def hydra_config_of(cfg, output_dir: Path):
    """``${hydra:...}`` resolves against ``cfg`` inside (as in the job), output dir included."""

    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(Path(output_dir).absolute())
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = saved


def check_job(cfg, output_dir: Path, base=None) -> None:
    """Validate one composed job (with its ``hydra`` node) as its task will see it."""
    with hydra_config_of(cfg, output_dir):
        try:
            to_object(task_config(cfg))
        except MixtrainError:
            raise
        except Exception as ex:  # an interpolation that does not resolve, ...
            raise MixtrainError(describe_config_error(ex, base)) from None


def prepare_run(cfg, command: str, replayed: Optional[Tuple[Path, List[str]]] = None):
    """Check the job, then make and lock its run dir (rank 0; every rank uses rank 0's dir).

    Returns ``(run_dir, created)``: ``created`` is the topmost folder made for it (None if the
    dir existed). Under torchrun this joins the process group (``train``).
    """

    declared = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    if replayed is not None:
        with hydra_config_of(cfg, Path(str(cfg.hydra.run.dir))):
            check_replayed(task_config(cfg), set(OmegaConf.to_container(cfg.hydra.runtime.choices)), *replayed)
    check_job(cfg, Path(str(cfg.hydra.run.dir)))
    if command == "eval" and OmegaConf.select(cfg, "calibrate"):  # its run must not be running: before any work
        claim_calibration(resolve_checkpoint(str(cfg.checkpoint)).resolve())
    resuming = command == "train" and OmegaConf.select(cfg, "resume") is not None
    ctx = distributed.context()
    if command == "train" and distributed.launched_by_torchrun():
        if cfg.hydra.mode is not None and str(cfg.hydra.mode).endswith("MULTIRUN"):
            raise MixtrainError("torchrun runs one training job; run sweeps with a Hydra launcher "
                                "(hydra/launcher=joblib or submitit_slurm), each job on its own GPUs")
        ctx = distributed.init(str(cfg.trainer.device))
    outcome = None
    if ctx.is_main:
        try:
            outcome = ("ok", *claim_run_dir(Path(str(cfg.hydra.run.dir)), command, resuming, "${now:" in str(declared)))
        except MixtrainError as ex:
            outcome = ("refused", str(ex), None)
    # Every rank takes rank 0's dir (Hydra resolves ${now:...} in each process) and its refusal.
    status, run_dir, created = distributed.broadcast_object(outcome)
    if status == "refused":
        raise MixtrainError(run_dir)
    with read_write(cfg.hydra), open_dict(cfg.hydra), read_write(cfg.hydra.run):
        cfg.hydra.run.dir = str(run_dir)
        if not ctx.is_main:  # ranks above 0 write no Hydra files
            cfg.hydra.output_subdir = None
    return Path(run_dir), created


# --------------------------------------------------------------------------- sweeps


def check_sweep(cfg, command: str) -> None:
    """Before a sweep starts: refuse a sweep dir that holds records; make and lock it; then check
    every job of the basic sweeper (each composed by Hydra's config loader, as its launcher will),
    or, for other sweepers (Optuna, ...), the fixed part of the config."""

    if command == "train" and distributed.launched_by_torchrun():
        raise MixtrainError("torchrun runs one training job; run sweeps with a Hydra launcher "
                            "(hydra/launcher=joblib or submitit_slurm), each job on its own GPUs")
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    check_writable(sweep_dir, "sweep dir", "hydra.sweep.dir")
    loader = GlobalHydra.instance().config_loader()
    sweeper = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default=""))
    if sweeper.endswith("BasicSweeper"):
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        lines = [f"{key}={value}" for key, value in params.items()]
        lines += OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
        try:
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(lines)
        except Exception as ex:  # a malformed override
            raise MixtrainError(describe_config_error(ex)) from None
        jobs = sweep_jobs(parsed)
        if not jobs:
            raise MixtrainError("the sweep has no jobs (a glob(...) that matches no option?): "
                                "check the group's options with `mixtrain train --help`")
    else:
        jobs = []
        check_job(cfg, sweep_dir, cfg)
    dirs: dict = {}
    for num, job in enumerate(jobs):
        try:
            composed = loader.load_sweep_config(cfg, list(job))
        except Exception as ex:  # Hydra and OmegaConf raise many types; all are config errors here
            raise MixtrainError(describe_config_error(ex, cfg)) from None
        with read_write(composed.hydra.job), open_dict(composed.hydra.job):
            composed.hydra.job.num = composed.hydra.job.id = num
        with hydra_config_of(composed, sweep_dir):
            out = (sweep_dir / str(composed.hydra.sweep.subdir)).absolute()
        if out in dirs:
            raise MixtrainError(f"jobs {dirs[out]} and {num} of the sweep would both write {out}: give each job a dir "
                                "of its own with hydra.sweep.subdir (its default: ${hydra.job.num})")
        dirs[out] = num
        check_job(composed, out, cfg)
    if not claim_dir(sweep_dir):
        raise MixtrainError(f"{sweep_dir} is being written by another mixtrain sweep: wait for it to end, "
                            "or pick another hydra.sweep.dir")
    taken = records_in(sweep_dir) + [p.name for p in sweep_dir.iterdir() if p.is_dir() and records_in(p)]
    if taken:
        raise MixtrainError(f"{sweep_dir} already holds a sweep ({', '.join(sorted(taken)[:3])}): pick another "
                            "hydra.sweep.dir")
