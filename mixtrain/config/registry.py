"""The registries: every kind of option of the ``dataset``, ``model``, ``augment``, ``optim``,
``sched`` and ``logger`` groups, one entry each, registered by the module that implements it.

An entry has a ``name`` (its schema in Hydra's ConfigStore: ``/schema/augment/fmix``, what a YAML
option starts from) and a ``schema`` (its config dataclass); each group's entries add what that
group needs (a mixing method: how it mixes, whether it previews, its label; a model family: how
to build it). The module of a kind registers it at import, which also stores its schema in the
ConfigStore. Everything that lists or dispatches on options (the ConfigStore, the error hints,
``describe_run``, ``mixtrain recipes``, preview, report, the docs) reads them here, so adding a
kind is its module, its YAML and its tests.

This module sits at the bottom of the package (it imports no other part of mixtrain); the packages
that register (``mixtrain.data``, ``mixtrain.models``, ``mixtrain.mixing``, ``mixtrain.loggers`` and
the optim and sched schemas) import it, and what reads it runs after they were imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from hydra.core.config_store import ConfigStore

GROUPS = ("dataset", "model", "augment", "optim", "sched")  # one option each
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


def register(entry: Entry) -> Entry:
    """Add ``entry`` to its group, and its schema to Hydra's ConfigStore."""

    REGISTRY[entry.group][entry.name] = entry
    ConfigStore.instance().store(group=f"schema/{entry.group}", name=entry.name, node=entry.schema)
    return entry


def options(group: str) -> Dict[str, Entry]:
    """The kinds of ``group`` registered so far, by name."""
    return REGISTRY[group]


def entry_of(group: str, config: Any) -> Optional[Entry]:
    """The entry whose schema ``config`` is an instance of (the most derived one), else None."""
    matches = [e for e in REGISTRY[group].values() if isinstance(config, e.schema)]
    return max(matches, key=lambda e: len(e.schema.__mro__), default=None)


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
    """Each group's entry checks its part of a whole run config (``TrainConfig``)."""
    for group in GROUPS:
        config = getattr(run, group, None)
        entry = entry_of(group, config)
        if entry is not None:
            entry.check_run(config, run)
