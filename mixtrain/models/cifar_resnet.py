"""ResNets for 32x32 images, each written as ``stem -> stages -> head``.

The split is explicit so that code outside the model (Manifold Mixup) can run the
stages one by one and act on the hidden state between them.

- ResNet-20/56: He et al., "Deep Residual Learning for Image Recognition", 2016, Sec. 4.2:
  3 stages of 16/32/64 channels, 3n+3n+3n basic blocks, option-A (parameter-free)
  shortcuts.
- PreAct ResNet-18: the model of the mixup paper's CIFAR experiments (Zhang et al.
  2018), as in facebookresearch/mixup-cifar10: conv-BN-ReLU stem, pre-activation basic
  blocks with 1x1 projection shortcuts, no final BN, average pool + linear.
- WRN-28-10: Zagoruyko & Komodakis, "Wide Residual Networks", 2016: pre-activation
  wide blocks (widths 160/320/640), dropout between the convolutions, final BN-ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn
from torch.utils.checkpoint import checkpoint

from mixtrain.config.errors import choice, probability
from mixtrain.config.model import ModelConfig
from mixtrain.models.family import register_family, run_image_size


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """He et al.'s option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, then ReLU (post-activation)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA(cin, cout) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-(dropout)-BN-ReLU-conv + shortcut (pre-activation, He et al. 2016b)."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut = (nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the activated input; the identity sees x itself.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + shortcut


class Head(nn.Module):
    """(optional BN-ReLU) -> global average pool -> (dropout) -> linear."""

    def __init__(self, channels: int, num_classes: int, final_norm: bool, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) if final_norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.drop(x))


class CifarResNet(nn.Module):
    """``stem -> stages[0] -> ... -> stages[-1] -> head``."""

    def __init__(self, stem: nn.Module, stages: List[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        # timm's convention for where the classifier is: its layer decay, optim.head_lr and a new head use it.
        self.pretrained_cfg = {"classifier": "head.fc"}
        self.grad_checkpointing = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass (timm models' method of the same name)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return self.head(x)


def _stages(block, widths: List[int], depth_per_stage: int, cin: int, **kwargs) -> List[nn.Module]:
    stages = []
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        blocks = []
        for j in range(depth_per_stage):
            blocks.append(block(cin, width, stride if j == 0 else 1, **kwargs))
            cin = width
        stages.append(nn.Sequential(*blocks))
    return stages


def _post_act_stem(cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(3, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def resnet_cifar(depth: int, num_classes: int, drop_rate: float = 0.0) -> CifarResNet:
    """ResNet-(6n+2) of He et al. 2016: ``depth=20`` or ``56`` for ResNet-20/56."""
    if (depth - 2) % 6:
        raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(_post_act_stem(16), _stages(BasicBlock, [16, 32, 64], n, 16),
                       Head(64, num_classes, final_norm=False, drop_rate=drop_rate))


def preact_resnet18(num_classes: int, drop_rate: float = 0.0) -> CifarResNet:
    return CifarResNet(_post_act_stem(64), _stages(PreActBlock, [64, 128, 256, 512], 2, 64),
                       Head(512, num_classes, final_norm=False, drop_rate=drop_rate))


def wide_resnet(depth: int, widen: int, num_classes: int, drop_rate: float = 0.0) -> CifarResNet:
    """WRN-depth-widen; ``drop_rate`` is the dropout between the two convs of each block."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    return CifarResNet(conv3x3(3, 16), _stages(PreActBlock, widths, n, 16, drop_rate=drop_rate),
                       Head(widths[-1], num_classes, final_norm=True))


BUILDERS = {
    "resnet20": lambda num_classes, drop_rate: resnet_cifar(20, num_classes, drop_rate),
    "resnet56": lambda num_classes, drop_rate: resnet_cifar(56, num_classes, drop_rate),
    "preact_resnet18": preact_resnet18,
    "wrn28_10": lambda num_classes, drop_rate: wide_resnet(28, 10, num_classes, drop_rate),
}
LARGE_PX = 96  # from this image size on, a model with a downsampling stem suits (model=auto picks one)
# Their number of stages (for Manifold Mixup's layer choice).
STAGES = {"resnet20": 3, "resnet56": 3, "preact_resnet18": 4, "wrn28_10": 3}


@dataclass
class CifarModelConfig(ModelConfig):
    """A ResNet bundled with mixtrain for 32x32 inputs (stem -> stages -> head)."""

    name: str = MISSING
    drop_rate: float = 0.0  # dropout inside wide blocks (WRN) or before the classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.name, tuple(BUILDERS), "model.name")
        probability(self.drop_rate, "model.drop_rate")


def too_small_a_stem(cfg: CifarModelConfig, run) -> Optional[str]:
    """These models keep the full resolution through their first stage: at photo sizes they are slow and big."""
    size = run_image_size(run)
    if size < LARGE_PX:
        return None
    return (f"{cfg.name} is built for 32 px images and keeps their full size through its first stage: at {size} px it "
            f"needs about {(size / 32) ** 2:.0f}x the memory and compute; use model=auto (timm's resnet18 here) or "
            "model=timm model.name=<a timm model>, or set dataset.image_size=32")


register_family("cifar", CifarModelConfig, lambda cfg, num_classes: BUILDERS[cfg.name](num_classes, cfg.drop_rate),
                names=tuple(BUILDERS), stages=lambda cfg: STAGES[cfg.name], advise=too_small_a_stem)
