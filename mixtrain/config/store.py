"""Where the configs live and how Hydra finds them: conf/ and recipes/, the schema of each
group option, and their registration in Hydra's ConfigStore."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from mixtrain.config.augment import (AugmentConfig, CutmixConfig, ManifoldConfig, MixupConfig, RegMixupConfig,
                                     SwitchConfig)
from mixtrain.config.commands import EvalConfig, ExportConfig, PredictConfig
from mixtrain.config.dataset import CifarConfig, FolderConfig, MiniConfig
from mixtrain.config.errors import to_object
from mixtrain.config.schemas import (CIFAR_MODELS, AdamWConfig, CifarModelConfig, CosineConfig, LambConfig,
                                     MultiStepConfig, SGDConfig, TimmModelConfig, TrainConfig)
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


SCHEMAS = {
    "dataset": {"cifar": CifarConfig, "mini": MiniConfig, "folder": FolderConfig},
    "model": {"cifar": CifarModelConfig, "timm": TimmModelConfig},
    "augment": {"none": AugmentConfig, "mixup": MixupConfig, "cutmix": CutmixConfig, "switch": SwitchConfig,
                "manifold": ManifoldConfig, "regmixup": RegMixupConfig},
    "optim": {"sgd": SGDConfig, "adamw": AdamWConfig, "lamb": LambConfig},
    "sched": {"cosine": CosineConfig, "multistep": MultiStepConfig},
}


def schema_for(group: str, name: str) -> type:
    """The schema class of a group option with this ``name`` (as saved in a run's config)."""
    if group == "model":
        return CifarModelConfig if name in CIFAR_MODELS else TimmModelConfig
    if group == "dataset" and name in ("cifar10", "cifar100"):
        return CifarConfig
    for schema in SCHEMAS[group].values():
        if schema.name == name:
            return schema
    raise MixtrainError(f"unknown {group} {name!r} in a saved config: choose one of "
                        f"{', '.join(s.name for s in SCHEMAS[group].values() if s.name != MISSING)}")


def config_from_dict(saved: Dict[str, Any]) -> "TrainConfig":
    """Rebuild (and re-validate) a TrainConfig from its ``asdict`` form, e.g. a checkpoint's."""
    nodes = {}
    for group in SCHEMAS:
        schema = schema_for(group, saved[group]["name"])
        nodes[group] = OmegaConf.merge(OmegaConf.structured(schema), saved[group])
    top = OmegaConf.merge(OmegaConf.structured(TrainConfig), {k: v for k, v in saved.items() if k not in SCHEMAS})
    for group, node in nodes.items():
        top[group] = node
    return to_object(top)


def register_configs() -> None:
    """Put the schemas and the recipes in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict", node=PredictConfig)
    cs.store(name="export", node=ExportConfig)
    for group, kinds in SCHEMAS.items():
        for kind, schema in kinds.items():
            cs.store(group=f"schema/{group}", name=kind, node=schema)
    # recipes/ sits beside conf/, not inside it, so Hydra would not see it as the
    # `recipe` group; registering each file keeps `recipe=NAME` working (no `+`).
    for path in sorted(recipes_dir().glob("*.yaml")):
        cs.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")




def asdict(obj: Any) -> Dict[str, Any]:
    """A plain dict of a config object (dataclass tree), for JSON files and checkpoints."""
    return dataclasses.asdict(obj)
