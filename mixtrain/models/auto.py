"""``model=auto`` (the default): the model the data's image size suits, chosen when the run is known.

Under 96 px (CIFAR, the bundled set, small cached folders) the bundled ResNet-20, whose stem keeps
the full resolution; at 96 px and more (a folder of photos, at its 224 px default) timm's
``resnet18``, whose stem downsamples 4x: ResNet-20 at 224 px holds ~50x the activations (10 GB
measured, 1 img/s on 2 cores). The run saves the model it chose and its first line says so.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mixtrain.config.errors import probability
from mixtrain.config.model import ModelConfig
from mixtrain.config.registry import Entry, options, register
from mixtrain.models.cifar_resnet import LARGE_PX
from mixtrain.models.family import run_image_size

SMALL, LARGE = ("cifar", "resnet20"), ("timm", "resnet18")


@dataclass
class AutoModelConfig(ModelConfig):
    """The model the data suits: ResNet-20 under 96 px, timm's resnet18 from 96 px on."""

    name: str = "auto"
    drop_rate: float = 0.0  # dropout before the classifier (either model)

    def __post_init__(self) -> None:
        super().__post_init__()
        probability(self.drop_rate, "model.drop_rate")


class AutoModel(Entry):
    def resolve(self, config: AutoModelConfig, run: Any) -> Any:
        size = run_image_size(run)
        family, name = LARGE if size >= LARGE_PX else SMALL
        schema = options("model")[family].schema
        keys = {f.name for f in fields(schema)}
        chosen = schema(**{f.name: getattr(config, f.name) for f in fields(config) if f.name in keys and f.name != "name"},
                        name=name)
        chosen.chosen_by = (f"model {name} (model=auto: {'timm' if family == 'timm' else 'the bundled'} {name} for "
                            f"{size} px images; choose another with model=...)")
        return chosen


register(AutoModel("model", "auto", AutoModelConfig, names=("auto",)))
