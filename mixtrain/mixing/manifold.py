"""Manifold Mixup (Verma et al. 2019): mix the hidden state after a random stage.

Layer 0 is the input; layer ``k >= 1`` is the output of the model's ``k``-th stage: ``stages[k - 1]``
of a bundled ResNet, or the module of the ``k``-th entry of a timm model's ``feature_info``
(timm >= 1.0: ``act1``, ``layer1`` ... ``layer4`` of a ResNet), so any timm model with feature
info can be trained with ``augment=manifold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import nn

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import at_least, require
from mixtrain.config.registry import entry_of
from mixtrain.errors import MixtrainError
from mixtrain.mixing.apply import mix_images, mix_targets
from mixtrain.mixing.method import Mixer, register_method, spec_of
from mixtrain.mixing.plans import MixSpec


@dataclass
class ManifoldConfig(MixConfig):
    """Manifold Mixup (Verma et al. 2019): Mixup of hidden states after a random stage."""

    name: str = "manifold"
    alpha: float = 2.0  # the paper's value for CIFAR
    layers: List[int] = field(default_factory=lambda: [0, 1, 2])  # 0 = input, k = after stage k

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")
        require(len(self.layers) > 0 and all(k >= 0 for k in self.layers), "augment.layers",
                "must list layers >= 0 (0 = input, k = after stage k)", self.layers)

    def spec(self) -> MixSpec:
        return spec_of(self, mixup_alpha=self.alpha)


def stage_modules(model: nn.Module) -> List[nn.Module]:
    """The modules whose outputs are the stages' (through DDP / torch.compile wrappers)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    if hasattr(inner, "stages"):  # the bundled ResNets: stem -> stages -> head
        return list(inner.stages)
    info = getattr(inner, "feature_info", None)
    if info is not None:  # timm: one entry per stage output, with the module that makes it
        names = [i["module"] for i in info.info] if hasattr(info, "info") else [i["module"] for i in info]
        return [inner.get_submodule(name) for name in names]
    raise MixtrainError(f"augment=manifold mixes hidden states after stages, and {type(inner).__name__} has neither "
                        "`stages` nor timm's `feature_info`: use a bundled ResNet or a timm model")


def check_layers(layers: List[int], stages: int, model_name: str) -> None:
    require(max(layers) <= stages, "augment.layers", f"must be in 0..{stages} for {model_name} ({stages} stages)",
            list(layers))


class ManifoldMixer(Mixer):
    """Mixup after a stage chosen per batch from ``augment.layers``, by a forward hook on that
    stage, so the model is still called as a whole (DDP and torch.compile wrappers keep working)."""

    def mixed_forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(labels)
        if not self.active(epoch):
            return model(images), targets
        layers = list(self.cfg.layers)
        layer = layers[int(self.rng.integers(len(layers)))]
        plan = self.draw_plan(images.shape[0], 1, 1)  # Mixup only: boxes are unused
        if layer == 0:
            return model(mix_images(images, plan)), mix_targets(targets, plan)
        stages = stage_modules(model)
        check_layers(layers, len(stages), type(model).__name__)
        handle = stages[layer - 1].register_forward_hook(lambda module, inputs, output: mix_images(output, plan))
        try:
            return model(images), mix_targets(targets, plan)
        finally:
            handle.remove()


def check_run(config: ManifoldConfig, run) -> None:
    """The stages of the run's model (where they are known before it is built), and what a mix
    inside the forward pass rules out."""
    family = entry_of("model", run.model)
    stages = family.stages(run.model) if family is not None else None
    if stages is not None:
        check_layers(config.layers, stages, run.model.name)
    require(run.trainer.accum_steps == 1, "trainer.accum_steps",
            "must be 1 with augment=manifold (it mixes inside the forward pass, so the batch cannot be mixed whole "
            "and then split)", run.trainer.accum_steps)
    require(not run.trainer.compile, "trainer.compile",
            "must be false with augment=manifold (its per-step hook would recompile the model)", True)


register_method("manifold", ManifoldConfig, ManifoldMixer, previewable=False, checks=check_run)
