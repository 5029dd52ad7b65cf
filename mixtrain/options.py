"""Every option mixtrain ships, registered, for the commands that compose configs.

Importing this imports each group's kinds (they register on import): the dataset sources, the
model families and the mixing methods (the optim and sched schemas come with ``mixtrain.config``).
:func:`register_configs` then adds the command schemas and the recipes to Hydra's ConfigStore.
"""

from __future__ import annotations

from mixtrain import config, data, mixing, models

PACKAGES = (data, models, mixing)  # what registers the kinds of the dataset, model and augment groups


def register_configs() -> None:
    """Every option in Hydra's ConfigStore: each group's kinds (registered on import) and the base."""
    config.register_configs()
