"""Model factory: the bundled CIFAR ResNets, or any timm model by name."""

from __future__ import annotations

import difflib

from torch import nn

from mixtrain.config import CifarModelConfig, TimmModelConfig
from mixtrain.errors import MixtrainError
from mixtrain.models.cifar_resnet import BUILDERS


def create_model(cfg: CifarModelConfig | TimmModelConfig, num_classes: int) -> nn.Module:
    if isinstance(cfg, CifarModelConfig):
        return BUILDERS[cfg.name](num_classes=num_classes, drop_rate=cfg.drop_rate)
    return _create_timm_model(cfg, num_classes)


def _create_timm_model(cfg: TimmModelConfig, num_classes: int) -> nn.Module:
    import timm

    if not timm.is_model(cfg.name):
        close = difflib.get_close_matches(cfg.name, timm.list_models(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise MixtrainError(f"model.name={cfg.name!r} is not a timm model{hint}: see timm.list_models()")
    try:
        return timm.create_model(cfg.name, pretrained=cfg.pretrained, num_classes=num_classes,
                                 drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate or None,
                                 **cfg.kwargs)
    except TypeError as ex:
        raise MixtrainError(f"timm model {cfg.name!r} rejected model.kwargs={cfg.kwargs}: {ex}") from None
    except (OSError, RuntimeError) as ex:
        if cfg.pretrained:
            raise MixtrainError(f"could not load pretrained weights for {cfg.name!r} ({str(ex).splitlines()[0]}): "
                                "check the network or the HF cache, or set model.pretrained=false") from None
        raise

