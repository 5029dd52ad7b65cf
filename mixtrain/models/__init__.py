"""Models: each family one registry entry (:mod:`mixtrain.models.family`): the bundled CIFAR ResNets,
any timm model by name, and a user's own ``nn.Module`` by ``_target_``."""

# Importing a family's module registers it: auto, cifar_resnet, custom, timm_models.
from mixtrain.models.auto import AutoModelConfig
from mixtrain.models.cifar_resnet import CifarModelConfig
from mixtrain.models.custom import CustomModelConfig
from mixtrain.models.family import ModelFamily, create_model, register_family
from mixtrain.models.timm_models import TimmModelConfig

__all__ = ["AutoModelConfig", "CifarModelConfig", "CustomModelConfig", "ModelFamily", "TimmModelConfig", "create_model",
           "register_family"]
