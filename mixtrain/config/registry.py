"""The registries: every kind of option of the ``dataset``, ``model``, ``augment``, ``optim``,
``sched`` and ``debug`` groups and the ``logger`` list, one entry each, registered by the module that
implements it.

An entry has a ``name`` (its schema in Hydra's ConfigStore: ``/schema/augment/fmix``, what a YAML
option starts from) and a ``schema`` (its config dataclass); each group's entries add what that
group needs (a mixing method: how it mixes, whether it previews, its label; a model family: how
to build it). The module of a kind registers it at import, which also stores its schema in the
ConfigStore. Everything that lists or dispatches on options (the ConfigStore, the error hints,
``describe_run``, ``mixtrain recipes``, preview, report, the docs) reads them here, so adding a
kind is its module, its YAML and its tests.

This module sits at the bottom of the package (it imports only :mod:`mixtrain.errors`); the packages
that register (``mixtrain.data``, ``mixtrain.models``, ``mixtrain.mixing``, ``mixtrain.loggers`` and
the optim, sched and debug schemas) import it, and what reads it runs after they were imported.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mixtrain.errors import MixtrainError

GROUPS = ("dataset", "model", "augment", "optim", "sched", "debug")  # one option each
# Groups that take a list of options (``logger=[tensorboard,mlflow]``): the config holds one node per
# option chosen, under its name (``logger.mlflow.*``).
LIST_GROUPS = ("logger",)

REGISTRY: Dict[str, Dict[str, "Entry"]] = {group: {} for group in (*GROUPS, *LIST_GROUPS)}


@dataclass(frozen=True)
class Entry:
    """One kind of option of a group."""

    group: str
    name: str  # its schema's name in the ConfigStore: /schema/<group>/<name>
    schema: type  # its config dataclass
    # The `name` values its configs carry (the options of this kind: resnet20, resnet56, ...);
    # None: its own name only. Reading a saved config back finds its kind by them.
    names: Optional[Tuple[str, ...]] = None

    @property
    def doc(self) -> str:
        """The first line of its schema's docstring."""
        return (self.schema.__doc__ or "").strip().splitlines()[0] if self.schema.__doc__ else ""

    def owns(self, saved: Dict[str, Any]) -> bool:
        """Whether a saved config (a dict, e.g. a checkpoint's) is of this kind."""
        return saved.get("name") in (self.names if self.names is not None else (self.name,))

    def check_run(self, config: Any, run: Any) -> None:
        """Checks that need the whole run config (``run``), beyond the schema's own; override."""

    def resolve(self, config: Any, run: Any) -> Any:
        """The option as the run uses it, once the whole run is known (``model=auto`` picks a model by the
        data's image size); the run saves what this returns. Override."""
        return config

    def advice(self, config: Any, run: Any) -> Optional[str]:
        """A warning for the run's first lines when the option does not suit the rest of the run. Override."""
        return None

    def preprocessing(self, config: Any) -> Optional[Dict[str, Any]]:
        """A model kind's own preprocessing (timm's pretrained config: mean, std, interpolation, crop,
        input size) for the data to take where it sets none; None: the kind has none. Override."""
        return None


def register(entry: Entry) -> Entry:
    """Add ``entry`` to its group, and its schema to Hydra's ConfigStore."""

    REGISTRY[entry.group][entry.name] = entry
    ConfigStore.instance().store(group=f"schema/{entry.group}", name=entry.name, node=schema_node(entry.schema))
    return entry


def schema_node(schema: type) -> DictConfig:
    """The schema as Hydra composes it, its dict fields (``kwargs``: another library's arguments) open, so
    that ``model.kwargs={depth:18}`` or ``model.kwargs.depth=18`` adds a key without ``+``."""
    node = OmegaConf.structured(schema)
    for f in dataclasses.fields(schema):
        if typing.get_origin(typing.get_type_hints(schema).get(f.name)) in (dict, Dict):
            OmegaConf.set_struct(node[f.name], False)
    return node


def options(group: str) -> Dict[str, Entry]:
    """The kinds of ``group`` registered so far, by name."""
    return REGISTRY[group]


# How each group's kinds register: named in the refusal of a config class that never did.
REGISTERS = {"dataset": "mixtrain.data.register_source", "model": "mixtrain.models.register_family",
             "augment": "mixtrain.mixing.register_method", "optim": "mixtrain.config.register",
             "sched": "mixtrain.config.register", "debug": "mixtrain.config.register",
             "logger": "mixtrain.loggers.register_logger"}


def entry_of(group: str, config: Any) -> Optional[Entry]:
    """The entry whose schema is ``config``'s class; None for a config of no registered kind. A subclass
    of a registered schema that was never registered itself is refused: taken for its base, it would
    run as the base's kind (a MixupConfig subclass training as plain mixup)."""
    kind = type(config)
    entry = next((e for e in REGISTRY[group].values() if e.schema is kind), None)
    if entry is None:
        base = next((e for c in kind.__mro__[1:] for e in REGISTRY[group].values() if e.schema is c), None)
        if base is not None:
            raise MixtrainError(f"{group} config {kind.__module__}.{kind.__qualname__} is not registered (it derives "
                                f"from {base.schema.__name__}, {group}={base.name}): its module must call "
                                f"{REGISTERS[group]}(name, {kind.__qualname__}, ...)")
    return entry


def saved_entry(group: str, saved: Dict[str, Any]) -> Optional[Entry]:
    """The kind of a saved config: the one that owns its name, else one whose schema has its keys."""
    kinds = list(REGISTRY[group].values())
    owner = next((e for e in kinds if e.owns(saved)), None)
    if owner is None:
        fits = [e for e in kinds if set(saved) <= {f.name for f in dataclasses.fields(e.schema)}]
        owner = min(fits, key=lambda e: len(dataclasses.fields(e.schema)), default=None)
    return owner


def logger_kind(saved: Dict[str, Any]) -> Optional[Entry]:
    """The kind of a ``logger.<key>`` node given as a dict: the one that owns its ``name``, else (no
    ``name``: a class of your own by ``_target_``) the one whose keys it has."""
    entry = saved_entry("logger", saved) if saved else None
    return None if entry is None or ("name" in saved and not entry.owns(saved)) else entry


def option_names(group: str) -> Tuple[str, ...]:
    """Every config name of ``group``'s kinds (``resnet20``, ``timm``, ...), sorted."""
    return tuple(sorted({n for e in REGISTRY[group].values() for n in (e.names or (e.name,))}))


def check_run(run: Any) -> None:
    """Each group's entry resolves, then checks, its part of a whole run config (``TrainConfig``)."""
    for group in GROUPS:
        entry = entry_of(group, getattr(run, group, None))
        if entry is not None:
            setattr(run, group, entry.resolve(getattr(run, group), run))
    for group in GROUPS:
        config = getattr(run, group, None)
        entry = entry_of(group, config)
        if entry is not None:
            entry.check_run(config, run)


def advice(run: Any) -> List[str]:
    """Each group's entry's warnings about the whole run, if any."""
    found = []
    for group in GROUPS:
        config = getattr(run, group, None)
        entry = entry_of(group, config)
        line = entry.advice(config, run) if entry is not None else None
        if line:
            found.append(line)
    return found
