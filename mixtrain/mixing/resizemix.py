"""ResizeMix (Qin et al. 2020, "ResizeMix: Mixing Data with Preserved Object Information and True
Labels"): the whole partner image, resized to a patch of side ``tau * H`` (``tau ~ U(scale_min,
scale_max)``, the paper's 0.1 and 0.8), pasted at a random place.

The patch is a box of integer sides inside the image (placed uniformly where it fits), so the
target weight is its exact area. The partner is resized by nearest-neighbour sampling at pixel
centres (torch's ``nearest-exact``; OpenMixup's ResizeMix resizes by nearest too): in batch mode
one patch size for the batch, copied into the box alone; otherwise one gather over the batch,
each sample's patch its own size, on the device. ``tau`` comes from the plan rule's draw,
Beta(1, 1) = U(0, 1) mapped onto [scale_min, scale_max].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import require
from mixtrain.mixing.apply import partner_weights
from mixtrain.mixing.masks import mix_by_weights
from mixtrain.mixing.method import Mixer, mixing, pair_sources, register_method, spec_of
from mixtrain.mixing.plans import MixPlan, MixSpec


@dataclass
class ResizeMixConfig(MixConfig):
    """ResizeMix (Qin et al. 2020): the partner, resized to a patch of side tau ~ U(scale_min, scale_max), pasted in."""

    name: str = "resizemix"
    scale_min: float = 0.1  # smallest patch side, a fraction of the image side
    scale_max: float = 0.8  # largest patch side, a fraction of the image side

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.scale_min <= self.scale_max <= 1.0, "augment.scale_min/scale_max",
                "must be 0 < scale_min <= scale_max <= 1", [self.scale_min, self.scale_max])
        require(not self.symmetric_lam, "augment.symmetric_lam", "is not meaningful with augment=resizemix (the "
                "patch is the whole partner image; lower augment.scale_max to keep more of the sample)", True)

    def spec(self) -> MixSpec:
        return spec_of(self, lam_draw="uniform")  # the uniform draw that tau maps


def patch_boxes(tau: np.ndarray, uniform: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[n, 4]`` boxes ``(y_low, y_high, x_low, x_high)`` of sides ``int(tau * size)`` (at least 1),
    placed uniformly inside the image; ``tau == 0``: an empty box."""
    size = np.array([height, width])
    side = np.maximum((tau[:, None] * size).astype(np.int64), 1) * (tau[:, None] > 0)
    low = (uniform * (size - side + 1)).astype(np.int64)
    return np.concatenate([low, low + side], axis=1)[:, [0, 2, 1, 3]]


def sample_index(low: np.ndarray, high: np.ndarray, size: int) -> np.ndarray:
    """``[n, size]``: for each pixel of the axis, the partner's pixel a patch over ``[low, high)`` reads
    (nearest at pixel centres); outside the patch, any valid index (masked out)."""
    span = np.maximum(high - low, 1)[:, None]
    position = np.arange(size)[None, :] - low[:, None]
    return np.clip(((position + 0.5) * size / span).astype(np.int64), 0, size - 1)


class ResizeMixMixer(Mixer):
    def boxes(self, plan: MixPlan, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        cfg, u = self.cfg, plan.lam.numpy()  # U(0, 1) from the plan rule; 1: not mixed
        tau = np.where(mixing(plan), cfg.scale_min + u * (cfg.scale_max - cfg.scale_min), 0.0)
        boxes = patch_boxes(tau, self.rng.random((len(tau), 2)), height, width)
        if not plan.shared:
            source = pair_sources(plan, cfg.mode)
            boxes, tau = boxes[source], tau[source]
        return boxes, tau > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        height, width = images.shape[-2:]
        plan = self.draw_plan(images.shape[0], height, width)
        if plan.is_identity:
            return images, targets
        boxes, pasted = self.boxes(plan, height, width)
        partner = plan.partner.to(images.device)
        if plan.shared:  # one patch for the batch: only its pixels are read and written
            y0, y1, x0, x1 = boxes[0].tolist()
            rows = torch.from_numpy(sample_index(boxes[:1, 0], boxes[:1, 1], height)[0, y0:y1]).to(images.device)
            cols = torch.from_numpy(sample_index(boxes[:1, 2], boxes[:1, 3], width)[0, x0:x1]).to(images.device)
            patch = images[:, :, rows][:, :, :, cols].index_select(0, partner)
            images[:, :, y0:y1, x0:x1] = patch
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
            return images, targets.index_select(0, partner).lerp_(targets, lam)
        rows = torch.from_numpy(sample_index(boxes[:, 0], boxes[:, 1], height)).to(images.device)
        cols = torch.from_numpy(sample_index(boxes[:, 2], boxes[:, 3], width)).to(images.device)
        batch = partner.view(-1, 1, 1)
        resized = images[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B, C, H, W]
        weights = partner_weights(MixPlan(plan.partner, plan.lam, torch.from_numpy(pasted), torch.from_numpy(boxes)),
                                  height, width, images.device, images.dtype)
        return mix_by_weights(images, targets, partner, weights, resized)


register_method("resizemix", ResizeMixConfig, ResizeMixMixer,
                label=lambda cfg: f"resizemix s={cfg.scale_min:g}-{cfg.scale_max:g}")
