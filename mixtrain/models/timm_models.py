"""Any model of timm's registry, by name: ``model=timm model.name=resnet50``."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from omegaconf import MISSING
from torch import nn

from mixtrain.config.errors import probability
from mixtrain.config.model import ModelConfig
from mixtrain.errors import MixtrainError
from mixtrain.models.family import register_family
from mixtrain.models.weights import check_pretrained_reachable, create_timm_with_file


@dataclass
class TimmModelConfig(ModelConfig):
    """Any model from timm's registry, created with ``timm.create_model``."""

    name: str = MISSING
    pretrained: bool = False  # needs network (or a local HF cache) when true
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth rate
    kwargs: Dict[str, Any] = field(default_factory=dict)  # more arguments for timm.create_model

    def __post_init__(self) -> None:
        super().__post_init__()
        probability(self.drop_rate, "model.drop_rate")
        probability(self.drop_path_rate, "model.drop_path_rate")


def create_timm_model(cfg: TimmModelConfig, num_classes: int) -> nn.Module:
    import timm  # its model registry: 0.6 s to import over torchvision, only for model=timm

    if not timm.is_model(cfg.name):
        close = difflib.get_close_matches(cfg.name, timm.list_models(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise MixtrainError(f"model.name={cfg.name!r} is not a timm model{hint}: see timm.list_models()")
    if cfg.pretrained:
        check_pretrained_reachable(cfg.name, timm_pretrained_cfg(cfg) or {})
    try:
        return timm.create_model(cfg.name, pretrained=cfg.pretrained, num_classes=num_classes,
                                 drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate or None,
                                 **cfg.kwargs)
    except TypeError as ex:
        raise MixtrainError(f"timm model {cfg.name!r} rejected model.kwargs={cfg.kwargs}: {ex}") from None
    except (OSError, RuntimeError) as ex:
        if cfg.pretrained:
            raise MixtrainError(f"could not load pretrained weights for {cfg.name!r} ({str(ex).splitlines()[0]}): "
                                "pass model.pretrained_path=FILE, check the network or the HF cache, or set "
                                "model.pretrained=false") from None
        raise


def create_timm_model_from_file(cfg: TimmModelConfig, num_classes: int) -> Tuple[nn.Module, str]:
    """A timm model whose weights come from ``model.pretrained_path``, through timm's own loading."""
    import timm  # as above

    create_timm_model(dataclasses.replace(cfg, pretrained=False, pretrained_path=None), num_classes)  # the name's checks
    return create_timm_with_file(timm.create_model, cfg.name, timm_pretrained_cfg(cfg), cfg.pretrained_path,
                                 num_classes, cfg.strict, dict(drop_rate=cfg.drop_rate,
                                                               drop_path_rate=cfg.drop_path_rate or None, **cfg.kwargs))


def timm_pretrained_cfg(cfg: TimmModelConfig) -> Optional[Dict[str, Any]]:
    """The model's pretrained config as timm has it (its preprocessing), without building the model; None
    for a name timm does not know (creating the model says so in its own line)."""
    import timm  # its model registry, as above

    try:
        found = timm.models.get_pretrained_cfg(cfg.name, allow_unregistered=True)
    except (RuntimeError, ValueError, KeyError):
        return None
    return found.to_dict() if found is not None else None


# Any name that is not a bundled model's is a timm model's (names=None: it owns the rest).
register_family("timm", TimmModelConfig, create_timm_model, pretrained_cfg=timm_pretrained_cfg,
                load_file=create_timm_model_from_file)
