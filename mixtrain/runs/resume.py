"""``train resume=RUN``: the command line that continues a run, and what it may take from the run dir.

The run continues in its own dir from its ``last.pt``, with the overrides it was started with.
What the run dir holds is data (:mod:`mixtrain.config.trust`): the overrides it stored may name
code (an import path, a ``pipe:`` command) only where this command line passes the same key, which
the Guard checks once Hydra has composed and resolved them (:func:`check_replayed`); its config dir
(``-cd``, whose files may name code) is used only when this command line passes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List

from omegaconf import OmegaConf

from mixtrain.artifacts.checkpoint import resume_checkpoint
from mixtrain.config.overrides import override_key, quote_value, saved_overrides
from mixtrain.config.trust import check_option_names, check_stored
from mixtrain.errors import MixtrainError
from mixtrain.evaluate.evaluation import override_value
from mixtrain.layout import HYDRA


def replayed_overrides(run_dir: Path) -> List[str]:
    """The overrides ``train resume=`` takes from a run dir: its ``.hydra/overrides.yaml`` less Hydra's and
    ``resume`` (Hydra keeps its own apart, in ``hydra.overrides.hydra``: any in this file were not its)."""
    return [o for o in saved_overrides(run_dir) if not override_key(o).startswith("hydra") and override_key(o) != "resume"]


def resume_args(args: List[str], parsed) -> List[str]:
    """For ``resume=PATH``: the original run's overrides first, then the new ones, and Hydra
    pointed at the run's own dir; its config name unless given again. Hydra's files for this
    invocation go to ``.hydra/resume-<time>``, so the original ``.hydra/`` stays as it was.
    """
    given = [o for o in parsed.overrides if o.startswith("resume=")]
    if not given:
        return args
    try:
        value = override_value(given[-1])
    except MixtrainError:  # a path with ',' or '[]' that Hydra would read as a sweep or a list: it is a path
        value = None
    ckpt = resume_checkpoint(value if isinstance(value, str) else given[-1].split("=", 1)[1]).resolve()
    run_dir = ckpt.parent
    rest = [o for o in parsed.overrides if not o.startswith("resume=")]
    moved = [o for o in rest if override_key(o) == "hydra.run.dir"]
    if moved and Path(str(override_value(moved[-1]))).expanduser().resolve() != run_dir:
        raise MixtrainError(f"resume continues {run_dir} in its own dir: drop {moved[-1]} (a new run in another dir "
                            f"from this checkpoint is init_from={ckpt})")
    hydra_dir = run_dir / HYDRA
    original = replayed_overrides(run_dir)
    # Before Hydra composes them: a group choice is a name (a path would load any file); the values are
    # checked by the Guard, composed and resolved (check_replayed).
    check_option_names([(override_key(o), override_value(o)) for o in original if "." not in override_key(o)],
                       hydra_dir / "overrides.yaml")
    flags = [a for a in args if a not in parsed.overrides]
    if os.path.lexists(hydra_dir / "hydra.yaml"):
        name, dirs = saved_config_source(hydra_dir / "hydra.yaml")
        if dirs and not parsed.config_dir:
            raise MixtrainError(f"{run_dir} was trained with the configs of {dirs[0]} (-cd), which may name code: "
                                f"pass -cd {dirs[0]} to continue it, if you trust them")
        # a name, looked up where Hydra looks (conf/, the -cd given)
        if name and not parsed.config_name and not Path(str(name)).is_absolute() and ".." not in Path(str(name)).parts:
            flags += ["--config-name", str(name)]
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    given = ",".join(dict.fromkeys(override_key(o) for o in rest))
    # What the Guard checks once Hydra has composed them rides on the Guard itself (check_replayed).
    return [*flags, *original, *rest, f"resume={quote_value(ckpt)}", f"hydra.run.dir={quote_value(run_dir)}",
            f"hydra.output_subdir=.hydra/resume-{stamp}", f"++hydra.callbacks.mixtrain.replayed={quote_value(run_dir)}",
            f"++hydra.callbacks.mixtrain.given=[{given}]"]


def saved_config_source(path: Path):
    """``(config name, [config dirs from the command line])`` of a run, from Hydra's ``hydra.yaml``."""
    try:
        saved = OmegaConf.load(path).hydra
        return str(saved.job.config_name), [str(s.path) for s in saved.runtime.config_sources
                                             if s.provider == "command-line"]
    except Exception as ex:  # cut short, edited, bad UTF-8, a folder in its place: OmegaConf and YAML errors
        first = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:160]
        raise MixtrainError(f"{path} is damaged ({first}): it names the run's config; restore it, or pass the "
                            "run's -cn NAME (and -cd DIR) with resume=") from None


def check_replayed(job, choices, run_dir: Path, given: List[str]) -> None:
    """Before the resumed config is read (its ``_target_`` imported, its data opened): the values the
    overrides of ``run_dir`` set in ``job`` (the task's config, composed), resolved, may name code only
    where this command line passes the key (``given``). A group choice (``model=tiny_net``; ``choices``:
    Hydra's) names an option, whose file is mixtrain's or the user's own."""
    try:
        tree = OmegaConf.to_container(job, resolve=True)
    except Exception:  # an interpolation that does not resolve: check the values as written (to_object says the rest)
        tree = OmegaConf.to_container(job, resolve=False)
    set_by_file = {}
    for key in dict.fromkeys(map(override_key, replayed_overrides(run_dir))):
        if key not in choices:
            node = tree
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            set_by_file[key] = node
    check_stored(set_by_file, run_dir / HYDRA / "overrides.yaml", given,
                 fix=lambda keys: " ".join(f"{key}=..." for key in keys) + " on this command line")
