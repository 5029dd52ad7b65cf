"""Typed config schemas: every key has one home, with its default and its checks.

Each YAML option in ``conf/<group>/`` starts from a schema in Hydra's ConfigStore
(``/schema/<group>/<kind>``), so a wrong type or an unknown key fails when Hydra composes the
config. Range checks live in ``__post_init__`` and run when :func:`to_object` turns the composed
config into these dataclasses, before any work starts. Modules: ``registry`` (every kind of every
group, registered by its module), ``dataset`` and ``augment`` (the bases of those groups' schemas;
each kind's own schema lives with it in ``mixtrain/data``, ``mixtrain/models``, ``mixtrain/mixing``),
``schemas`` (optim, sched, trainer, the train config), ``debug`` (the debug group),
``commands`` (eval, predict, export),
``store`` (conf/, recipes/, the ConfigStore, saved configs), ``errors`` (checks and one-line
errors), ``overrides`` (Hydra's command line).
"""

from mixtrain.config.augment import MIX_MODES, AugmentConfig, MixConfig
from mixtrain.config.commands import EvalConfig, ExportConfig, PredictConfig, heldout_fraction
from mixtrain.config.dataset import AUTO_AUGMENT_POLICIES, DatasetConfig, StreamedConfig
from mixtrain.config.debug import AnomalyConfig, DebugConfig, FastConfig, OverfitConfig, ProfileConfig
from mixtrain.config.errors import check_no_extra_keys, debug_enabled, describe_config_error, to_object
from mixtrain.config.registry import GROUPS, Entry, entry_of, options, register
from mixtrain.config.schemas import EmaConfig, OptimConfig, SchedConfig, TrainConfig, TrainerConfig
from mixtrain.config.store import asdict, config_dir, config_from_dict, recipes_dir, register_configs, schema_for

__all__ = ["AUTO_AUGMENT_POLICIES", "AnomalyConfig", "AugmentConfig", "DatasetConfig",
           "DebugConfig", "EmaConfig", "FastConfig", "OverfitConfig", "ProfileConfig",
           "Entry", "EvalConfig", "ExportConfig", "GROUPS", "MIX_MODES", "MixConfig",
           "OptimConfig", "PredictConfig", "SchedConfig", "StreamedConfig",
           "TrainConfig", "TrainerConfig", "asdict", "check_no_extra_keys", "config_dir", "config_from_dict",
           "debug_enabled", "describe_config_error", "entry_of", "heldout_fraction", "options", "recipes_dir",
           "register", "register_configs", "schema_for", "to_object"]
