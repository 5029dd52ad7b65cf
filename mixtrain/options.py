"""Every option mixtrain ships, registered, for the commands that compose configs.

Importing this imports each group's kinds (they register on import): the dataset sources, the
model families, the mixing methods and the loggers (the optim and sched schemas come with
``mixtrain.config``).
:func:`register_configs` then adds the command schemas and the recipes to Hydra's ConfigStore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mixtrain import config, data, loggers, mixing, models
from mixtrain.errors import MixtrainError

PACKAGES = (data, models, mixing, loggers)  # what registers the kinds of the dataset, model, augment and logger groups


def register_configs() -> None:
    """Every option in Hydra's ConfigStore: each group's kinds (registered on import) and the base."""
    config.register_configs()


def compose(config_name: str, overrides: Sequence[str], search_dir: Optional[str] = None,
            return_hydra_config: bool = False) -> DictConfig:
    """One config composed as Hydra's compose API does, from mixtrain's ``conf/`` (and a user's
    ``search_dir``, as ``-cd`` adds it), every option registered; a composition error is one
    line (:class:`~mixtrain.errors.MixtrainError`). For the commands that are not Hydra apps
    (predict, export, compare, recipes, report)."""
    register_configs()
    overrides = list(overrides) + ([f"hydra.searchpath=[file://{Path(search_dir).resolve()}]"] if search_dir else [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3", job_name=config_name):
        try:
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)
        except Exception as ex:  # Hydra and OmegaConf raise many types; all are config errors here
            raise MixtrainError(config.describe_config_error(ex)) from None
