"""Where the configs live and how Hydra finds them: conf/ and recipes/, the command schemas and
the recipes in Hydra's ConfigStore, and a saved config read back through the registries."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import OmegaConf

from mixtrain.config.commands import EvalConfig, ExportConfig, PredictConfig
from mixtrain.config.errors import to_object
from mixtrain.config.registry import GROUPS, logger_kind, option_names, saved_entry
from mixtrain.config.schemas import TrainConfig
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
    the class its ``_target_`` names (a user's own option), else the kind that owns it."""
    if TARGET in saved:

        cls = get_class(saved[TARGET])
        if dataclasses.is_dataclass(cls):  # else it is what a `custom` option builds (a model, a Dataset)
            return cls
    entry = saved_entry(group, saved)
    if entry is None:
        raise MixtrainError(f"unknown {group} {saved.get('name')!r} in a saved config: choose one of "
                            f"{', '.join(option_names(group))} (or import the module that registers it)")
    return entry.schema


def config_from_dict(saved: Dict[str, Any]) -> "TrainConfig":
    """Rebuild (and re-validate) a TrainConfig from its ``asdict`` form, e.g. a checkpoint's."""
    nodes = {}
    for group in GROUPS:
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
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict", node=PredictConfig)
    cs.store(name="export", node=ExportConfig)
    # recipes/ sits beside conf/, not inside it, so Hydra would not see it as the
    # `recipe` group; registering each file keeps `recipe=NAME` working (no `+`).
    for path in sorted(recipes_dir().glob("*.yaml")):
        cs.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


TARGET = "_target_"


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
