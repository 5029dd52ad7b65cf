"""Config checks and errors: the range checks the schemas call, and one line for every
composition error (the key, what is wrong, the likeliest fix)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, List, Optional

from hydra.errors import MissingConfigException, OverrideParseException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mixtrain.config.registry import REGISTRY, option_names
from mixtrain.errors import MixtrainError


def require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise MixtrainError(f"{key} {message} (got {value!r})")


def choice(value: str, choices: tuple, key: str) -> None:
    require(value in choices, key, f"must be one of {', '.join(choices)}", value)


def probability(value: float, key: str) -> None:
    require(0.0 <= value <= 1.0, key, "must be a probability in [0, 1]", value)


def at_least(value: float, low: float, key: str) -> None:
    require(value >= low, key, f"must be >= {low}", value)


def valid_device(value: str, key: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (N a device index)."""
    index = value[len("cuda:"):] if value.startswith("cuda:") else None
    require(value in ("auto", "cpu", "cuda") or (index is not None and index.isdecimal()), key,
            "must be auto, cpu, cuda or cuda:N (N = 0, 1, ...)", value)


def valid_seed(value: int, key: str) -> None:
    # NumPy's legacy seeding (timm's RandAugment draws from it) takes 32-bit seeds.
    at_least(value, 0, key)
    require(value < 2**32, key, "must be < 2**32 (NumPy's seeds are 32-bit)", value)


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix[:-1]}[{i}].")
    else:
        yield prefix[:-1], tree


def check_finite(cfg: DictConfig) -> None:
    """Refuse inf and NaN wherever a number is read (NumPy's Beta(inf, inf) is NaN: nothing would mix)."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return  # to_object says what is wrong
    for key, value in _leaves(tree):
        if isinstance(value, float) and not math.isfinite(value):
            raise MixtrainError(f"{key} must be a finite number (got {value})")


def schema_of_target(node: Any, key: str) -> Optional[type]:
    """The class a schema-less group node names by ``_target_`` (a user's own option: importing its
    module registers it), or None for a node without one."""
    if not isinstance(node, DictConfig) or OmegaConf.get_type(node) not in (dict, None) or "_target_" not in node:
        return None

    try:
        cls = get_class(str(node["_target_"]))
    except Exception as ex:  # Hydra wraps the ImportError / AttributeError of the dotted path
        raise MixtrainError(f"{key}._target_={node['_target_']!r} cannot be imported "
                            f"({str(ex).splitlines()[0]}): put its module on the Python path") from None
    if not dataclasses.is_dataclass(cls):
        raise MixtrainError(f"{key}._target_={node['_target_']!r} is not a config dataclass: an option of your own "
                            f"names its schema (a dataclass whose module registers it); a model or Dataset class of "
                            f"your own goes in {key}=custom {key}._target_=... (README: Your own configs)")
    return cls


def typed_targets(cfg: DictConfig) -> DictConfig:
    """Each top-level node that names its schema by ``_target_`` (``augment: {_target_:
    my_pkg.BlendConfig, alpha: 0.5}``) as a node of that schema, so it is checked as the others."""
    for key in list(cfg.keys()) if isinstance(cfg, DictConfig) else []:
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        schema = schema_of_target(cfg[key], key)
        if schema is not None:
            values = {k: v for k, v in OmegaConf.to_container(cfg[key], resolve=True).items() if k != "_target_"}
            try:
                typed = OmegaConf.merge(OmegaConf.structured(schema), values)
            except OmegaConfBaseException as ex:
                raise MixtrainError(describe_config_error(ex, cfg)) from None
            with open_dict(cfg):
                cfg[key] = typed
    return cfg


def to_object(cfg: DictConfig) -> Any:
    """Resolve and validate a composed config; return the dataclass tree."""
    cfg = typed_targets(cfg)
    check_no_extra_keys(cfg)
    check_finite(cfg)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as ex:
        raise MixtrainError(describe_config_error(ex, cfg)) from None


def _child(cfg: DictConfig, key: str) -> Optional[DictConfig]:
    """The config node under ``key`` if it is a config (not missing, None or an interpolation), else None."""
    if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
        return None
    child = cfg[key]
    return child if isinstance(child, DictConfig) else None


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    keys = []
    for k in cfg.keys():
        child = _child(cfg, k)
        keys.extend(_leaf_keys(child, f"{prefix}{k}.") if child is not None else [f"{prefix}{k}"])
    return keys


def _unknown_key(key: str, cfg: Optional[DictConfig]) -> str:
    """'unknown config key' plus the likeliest fix: a near name beside it, or the same name elsewhere."""
    message = f"unknown config key '{key}'"
    if cfg is None:
        return message
    parent, _, leaf = key.rpartition(".")
    keys = [k for k in _leaf_keys(cfg) if k != key]
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.7)
    if close:
        return f"{message}; did you mean {parent + '.' if parent else ''}{close[0]}?"
    elsewhere = [k for k in keys if k.rpartition(".")[2] == leaf]
    if elsewhere:
        return f"{message}; did you mean {elsewhere[0]}?"
    owners = [f"{parent}={name}" for entry in REGISTRY.get(parent, {}).values()
              if leaf in {f.name for f in dataclasses.fields(entry.schema)} for name in (entry.names or (entry.name,))]
    if owners:
        return f"{message}: it belongs to {' / '.join(owners)}"
    strict = "; the schemas are strict, so `+key=` cannot add a key (README: Your own configs)"
    if siblings:
        return f"{message} ({parent or 'the top level'} has: {', '.join(siblings)}){strict}"
    return message + strict


def check_no_extra_keys(cfg: DictConfig, root: Optional[DictConfig] = None, prefix: str = "") -> None:
    """Reject keys that a schema does not declare (``+key=value`` gets past Hydra's struct mode)."""
    root = cfg if root is None else root
    schema = OmegaConf.get_type(cfg)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for k in cfg.keys():
        if declared is not None and k not in declared:
            raise MixtrainError(_unknown_key(f"{prefix}{k}", root))
        child = _child(cfg, k)
        if child is not None:
            check_no_extra_keys(child, root, f"{prefix}{k}.")


def describe_config_error(ex: BaseException, cfg: Optional[DictConfig] = None) -> str:
    """One line for a Hydra/OmegaConf composition error: the key, what is wrong, the fix."""

    if isinstance(ex, MissingConfigException) and ex.options is not None and ex.missing_cfg_file:
        group, _, name = str(ex.missing_cfg_file).rpartition("/")
        plugins = " (Hydra's launcher and sweeper plugins: pip install \"mixtrain[launchers]\")" if group.startswith("hydra/") else ""
        return f"unknown {group} '{name}': choose one of {', '.join(sorted(ex.options))}{plugins}"
    group, _, name = str(getattr(ex, "missing_cfg_file", None) or "").rpartition("/")
    if isinstance(ex, MissingConfigException) and group in REGISTRY:
        # An option of a list (logger=[tensorboard,foo]): Hydra names no options; the registry does.
        return f"unknown {group} '{name}': choose one of {', '.join(option_names(group))}"
    if isinstance(ex, OverrideParseException):
        key, _, value = str(ex.override).partition("=")
        quote = (f"; quote a value with braces or commas inside the override: '{key}=\"{value}\"'"
                 if any(c in value for c in "{},") and not value.startswith(("'", '"')) else "")
        return f"cannot parse override '{ex.override}': {ex.message.splitlines()[0]}{quote}"
    cause = ex
    while not isinstance(cause, OmegaConfBaseException) and cause.__cause__ is not None:
        cause = cause.__cause__
    first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
    if not isinstance(cause, OmegaConfBaseException):
        if "Could not override '" in first or "Could not append to config" in first:
            key = first.split("'")[1]
            return _unknown_key(key, cfg)
        # Hydra's own hints follow on the next lines ("... add --multirun to your command line"): keep them.
        return "; ".join(line.strip() for line in str(ex).strip().splitlines() if line.strip())
    key = cause.full_key or ""
    msg = (cause.msg or str(cause)).strip().splitlines()[0]
    kind = type(cause).__name__
    if kind in ("ConfigKeyError", "ConfigAttributeError") or "not in struct" in msg or "not in '" in msg:
        return _unknown_key(key, cfg)
    if kind == "MissingMandatoryValue":
        return f"{key} is required: pass {key}=..."
    return f"{key}: {msg}" if key else msg


def debug_enabled() -> bool:
    """Whether errors should keep their traceback (MIXTRAIN_DEBUG=1)."""
    return os.environ.get("MIXTRAIN_DEBUG", "") not in ("", "0")
