"""Where the configs live and how Hydra finds them: conf/ and recipes/, the command schemas and
the recipes in Hydra's ConfigStore, and a saved config read back through the registries."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf

from mixtrain.config.commands import EvalConfig, ExportConfig, PredictConfig
from mixtrain.config.errors import to_object
from mixtrain.config.registry import GROUPS, logger_kind, option_names, saved_entry
from mixtrain.config.schemas import OptimConfig, TrainConfig
from mixtrain.config.trust import TARGET, check_stored
from mixtrain.errors import MixtrainError

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _resource_dir(name: str) -> Path:
    """``conf/`` or ``recipes/``: inside the package in a wheel, beside it in a checkout."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise MixtrainError(f"mixtrain's {name}/ directory is missing from {PACKAGE_DIR}: reinstall mixtrain")


def config_dir() -> Path:
    return _resource_dir("conf")


def recipes_dir() -> Path:
    return _resource_dir("recipes")


def schema_for(group: str, saved: Dict[str, Any]) -> type:
    """The schema class of a saved group config (``{"name": "resnet20", ...}``, e.g. a checkpoint's):
    the class its ``_target_`` names (a user's own option), else the kind that owns it. Importing
    that class runs its module: a caller asks :func:`~mixtrain.config.trust.check_stored` first."""
    if TARGET in saved:

        cls = get_class(saved[TARGET])
        if dataclasses.is_dataclass(cls):  # else it is what a `custom` option builds (a model, a Dataset)
            return cls
    entry = saved_entry(group, saved)
    if entry is None:
        raise MixtrainError(f"unknown {group} {saved.get('name')!r} in a saved config: choose one of "
                            f"{', '.join(option_names(group))} (or import the module that registers it)")
    return entry.schema


def upgrade_saved(saved: Dict[str, Any]) -> Dict[str, Any]:
    """A config saved before the optimizer and the schedule were timm's, in today's keys: the same
    optimizer (torch's non-Nesterov SGD is timm's ``momentum``; its other arguments in ``kwargs``) and
    schedule (``milestones``, ``gamma`` and ``warmup_start_factor`` are timm's ``decay_milestones``,
    ``decay_rate`` and an absolute ``warmup_lr``)."""
    optim, sched = dict(saved["optim"]), dict(saved["sched"])
    if "filter_bias_and_bn" in optim and "kwargs" not in optim and TARGET not in optim:
        if optim.get("name") == "sgd" and not optim.pop("nesterov", False):
            optim["name"] = "momentum"
        known = {f.name for f in dataclasses.fields(OptimConfig)}
        optim["kwargs"] = {k: optim.pop(k) for k in list(optim) if k not in known}
    if "warmup_start_factor" in sched and TARGET not in sched:
        sched["warmup_lr"] = sched.pop("warmup_start_factor") * optim.get("lr", 0.1)
        for old, new in (("milestones", "decay_milestones"), ("gamma", "decay_rate")):
            if old in sched:
                sched[new] = sched.pop(old)
    return {**saved, "optim": optim, "sched": sched}


def config_from_dict(saved: Dict[str, Any], source: Any, given: Collection[str] = (), commands: bool = True,
                     fix: Optional[Callable[[Sequence[str]], str]] = None) -> "TrainConfig":
    """Rebuild (and re-validate) a TrainConfig from its ``asdict`` form, e.g. a checkpoint's (``source``),
    once :func:`~mixtrain.config.trust.check_stored` has found no code in it that the command line
    (``given``: the keys it passes) does not pass."""
    # Its loggers are read as names and never built from here (only a run's own command line builds them).
    check_stored({k: v for k, v in saved.items() if k != "logger"}, source, given, commands, fix)
    saved = upgrade_saved(saved)
    nodes = {}
    for group in GROUPS:
        if saved.get(group) is None:  # an optional group left empty (debug), or one a config predates
            continue
        schema = schema_for(group, saved[group])
        fields = {f.name for f in dataclasses.fields(schema)}
        values = {k: v for k, v in saved[group].items() if k != TARGET or k in fields}
        nodes[group] = OmegaConf.merge(OmegaConf.structured(schema), values)
    rest = {k: v for k, v in saved.items() if k not in GROUPS}
    if isinstance(rest.get("logger"), dict):
        # Loggers are read as data (a class of your own stays a name: nothing here imports it); one of a
        # kind this process has not registered is left out: no logger changes what the run means.
        rest["logger"] = {k: v for k, v in rest["logger"].items() if isinstance(v, dict) and logger_kind(v)}
    top = OmegaConf.merge(OmegaConf.structured(TrainConfig), rest)
    for group, node in nodes.items():
        top[group] = node
    return to_object(top)


def register_configs() -> None:
    """Put the command schemas and the recipes in Hydra's ConfigStore (each group's kinds store
    their own schemas when they register)."""
    OmegaConf.register_new_resolver("mixtrain_groups", help_groups, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict", node=PredictConfig)
    cs.store(name="export", node=ExportConfig)
    # recipes/ sits beside conf/, not inside it, so Hydra would not see it as the
    # `recipe` group; registering each file keeps `recipe=NAME` working (no `+`).
    for path in sorted(recipes_dir().glob("*.yaml")):
        cs.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def help_groups() -> str:
    """The config groups ``--help`` lists (``conf/hydra/help/mixtrain.yaml``): Hydra's own listing of
    every group it finds (a user's ``-cd`` dir included), less Hydra's and the ``schema/*`` groups,
    which hold the schemas the options start from.

    Empty unless Hydra is printing help (``--help`` on the command line Hydra reads): OmegaConf
    also resolves the template whenever Hydra merges its own node, at every composition, where the
    listing would cost seconds."""
    if not {"-h", "--help"} & set(sys.argv[1:]):
        return ""
    return listed_groups(GlobalHydra.instance().hydra)


@functools.lru_cache(maxsize=1)
def listed_groups(hydra: Any) -> str:
    """Hydra's listing, made once for the Hydra that prints the help: OmegaConf resolves the help
    template twice, and each listing opens Hydra's config repository once per group (4.5 s on 2 cores)."""

    def chosen_by_users(group: str) -> bool:
        return not group.startswith(("hydra/", "schema/")) and group not in ("hydra", "schema")

    return hydra.format_config_groups(chosen_by_users).rstrip("\n")


def asdict(obj: Any) -> Dict[str, Any]:
    """A plain dict of a config object (dataclass tree), for JSON files and checkpoints. A group option
    of a kind from outside mixtrain keeps its class as ``_target_``, so reading it back (resume, eval)
    imports its module."""
    tree = dataclasses.asdict(obj)
    for group in GROUPS:
        node = getattr(obj, group, None)
        if dataclasses.is_dataclass(node) and not type(node).__module__.startswith("mixtrain."):
            tree[group] = {TARGET: f"{type(node).__module__}.{type(node).__qualname__}", **tree[group]}
    return tree


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree} if prefix else {}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def import_target(key: str, target: str, example: str) -> type:
    """The class a ``_target_`` names (a user's own model or dataset), or one line naming the fix."""
    try:
        return get_class(target)
    except Exception as ex:  # Hydra wraps the ImportError / AttributeError of the dotted path
        raise MixtrainError(f"{key}={target!r} cannot be imported ({str(ex).splitlines()[0]}): "
                            f"name a class on the Python path, e.g. {example}") from None
