"""Typed config schemas: every key has one home, with its default and its checks.

Each YAML option in ``conf/<group>/`` starts from one of these schemas (through the
``/schema/<group>/<kind>`` entries of :mod:`mixtrain.config.store`), so a wrong type or an
unknown key fails when Hydra composes the config. Range checks live in ``__post_init__``
and run when :func:`to_object` turns the composed config into these dataclasses, before
any work starts. Modules: ``dataset``, ``augment``, ``schemas`` (model, optim, sched,
trainer, the train config), ``commands`` (eval, predict, export), ``store`` (conf/,
recipes/, Hydra's ConfigStore), ``errors`` (checks and one-line errors), ``recipes``.
"""

from mixtrain.config.augment import (MIX_MODES, AugmentConfig, CutmixConfig, ManifoldConfig, MixConfig, MixupConfig,
                                     RegMixupConfig, SwitchConfig)
from mixtrain.config.commands import EvalConfig, ExportConfig, PredictConfig, heldout_fraction
from mixtrain.config.dataset import AUTO_AUGMENT_POLICIES, CifarConfig, DatasetConfig, FolderConfig, MiniConfig
from mixtrain.config.errors import check_no_extra_keys, debug_enabled, describe_config_error, to_object
from mixtrain.config.schemas import (CIFAR_MODEL_STAGES, CIFAR_MODELS, OBJECTIVES, AdamWConfig, CifarModelConfig,
                                     CosineConfig, EmaConfig, LambConfig, MultiStepConfig, OptimConfig, SchedConfig,
                                     SGDConfig, TimmModelConfig, TrainConfig, TrainerConfig)
from mixtrain.config.store import (SCHEMAS, asdict, config_dir, config_from_dict, recipes_dir, register_configs,
                                   schema_for)

__all__ = ["AUTO_AUGMENT_POLICIES", "AdamWConfig", "AugmentConfig", "CIFAR_MODELS", "CIFAR_MODEL_STAGES", "CifarConfig", "CifarModelConfig", "CosineConfig", "CutmixConfig", "DatasetConfig", "EmaConfig", "EvalConfig", "ExportConfig", "FolderConfig", "LambConfig", "MIX_MODES", "ManifoldConfig", "MiniConfig", "MixConfig", "MixupConfig", "MultiStepConfig", "OBJECTIVES", "OptimConfig", "PredictConfig", "RegMixupConfig", "SCHEMAS", "SGDConfig", "SchedConfig", "SwitchConfig", "TimmModelConfig", "TrainConfig", "TrainerConfig", "asdict", "check_no_extra_keys", "config_dir", "config_from_dict", "debug_enabled", "describe_config_error", "heldout_fraction", "recipes_dir", "register_configs", "schema_for", "to_object"]
