"""Manifold Mixup (Verma et al. 2019): mix the hidden state after a random stage."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from mixtrain.mixing.mixup import Mixer
from mixtrain.mixing.plans import mix_images, mix_targets


class ManifoldMixer(Mixer):
    """Layer 0 is the input; layer ``k >= 1`` is the output of ``model.stages[k - 1]``.

    The mix is done by a forward hook on that stage, so the model is still called as a
    whole (DDP and torch.compile wrappers keep working).
    """

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
        stage = stages_of(model)[layer - 1]
        handle = stage.register_forward_hook(lambda module, inputs, output: mix_images(output, plan))
        try:
            return model(images), mix_targets(targets, plan)
        finally:
            handle.remove()


def stages_of(model: nn.Module) -> nn.ModuleList:
    """The ``stages`` of a bundled ResNet, through DDP / torch.compile wrappers."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return inner.stages
