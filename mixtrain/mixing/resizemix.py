"""ResizeMix (Qin et al. 2020, "ResizeMix: Mixing Data with Preserved Object Information and True
Labels"): the whole partner image, resized to a patch of side ``tau * H`` (``tau ~ U(scale_min,
scale_max)``, the paper's 0.1 and 0.8), pasted at a random place.

The patch is a box of integer sides inside the image (placed uniformly where it fits), so the
target weight is its exact area. The partner is resized by one ``grid_sample`` for the whole
batch (bilinear; each sample's patch its own size), on the device. ``tau`` comes from the plan
rule's draw, Beta(1, 1) = U(0, 1) mapped onto [scale_min, scale_max].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import require
from mixtrain.mixing.masks import MaskMixer, pair_sources
from mixtrain.mixing.method import register_method
from mixtrain.mixing.mixup import spec_of
from mixtrain.mixing.plans import MixPlan, MixSpec, partner_weights


@dataclass
class ResizeMixConfig(MixConfig):
    """ResizeMix (Qin et al. 2020): the partner, resized to a patch of side tau ~ U(scale_min, scale_max), pasted in."""

    name: str = "resizemix"
    scale_min: float = 0.1
    scale_max: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.scale_min <= self.scale_max <= 1.0, "augment.scale_min/scale_max",
                "must be 0 < scale_min <= scale_max <= 1", [self.scale_min, self.scale_max])
        require(not self.symmetric_lam, "augment.symmetric_lam", "is not meaningful with augment=resizemix (the "
                "patch is the whole partner image; lower augment.scale_max to keep more of the sample)", True)

    def spec(self) -> MixSpec:
        return spec_of(self, 1.0, 0.0, 0.0)  # Beta(1, 1): the uniform draw of tau


def patch_boxes(tau: np.ndarray, uniform: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[n, 4]`` boxes ``(y_low, y_high, x_low, x_high)`` of sides ``int(tau * size)`` (at least 1),
    placed uniformly inside the image; ``tau == 0``: an empty box."""
    size = np.array([height, width])
    side = np.maximum((tau[:, None] * size).astype(np.int64), 1) * (tau[:, None] > 0)
    low = (uniform * (size - side + 1)).astype(np.int64)
    return np.concatenate([low, low + side], axis=1)[:, [0, 2, 1, 3]]


class ResizeMixMixer(MaskMixer):
    def boxes(self, plan: MixPlan, height: int, width: int) -> MixPlan:
        cfg = self.cfg
        u = plan.lam.numpy()  # U(0, 1) from the plan rule; 1: not mixed
        tau = np.where(u < 1.0, cfg.scale_min + u * (cfg.scale_max - cfg.scale_min), 0.0)
        boxes = patch_boxes(tau, self.rng.random((len(tau), 2)), height, width)
        if not plan.shared:
            boxes = boxes[pair_sources(plan, self.cfg.mode)]
        return MixPlan(plan.partner, plan.lam, torch.from_numpy(tau > 0), torch.from_numpy(boxes), plan.shared)

    def masks(self, plan: MixPlan, images: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        self.patched = self.boxes(plan, *images.shape[-2:])
        return partner_weights(self.patched, *images.shape[-2:], images.device, images.dtype)

    def partner_images(self, plan: MixPlan, images: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Each partner resized into its sample's box (anything outside the box is masked out)."""
        n, _, height, width = other.shape
        boxes = self.patched.boxes.to(images.device, torch.float32)
        if self.patched.shared:
            boxes = boxes.expand(n, 4)
        y_low, y_high, x_low, x_high = boxes.unbind(1)
        rows = torch.arange(height, device=images.device, dtype=torch.float32) + 0.5
        cols = torch.arange(width, device=images.device, dtype=torch.float32) + 0.5
        # Where each output pixel of the box reads the partner, in grid_sample's [-1, 1] coordinates.
        gy = (rows[None, :] - y_low[:, None]) / (y_high - y_low).clamp_min(1)[:, None] * 2 - 1
        gx = (cols[None, :] - x_low[:, None]) / (x_high - x_low).clamp_min(1)[:, None] * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return F.grid_sample(other.float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=False).to(other.dtype)


register_method("resizemix", ResizeMixConfig, ResizeMixMixer,
                label=lambda cfg: f"resizemix s={cfg.scale_min:g}-{cfg.scale_max:g}")
