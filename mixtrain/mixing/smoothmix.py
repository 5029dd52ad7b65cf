"""SmoothMix (Lee et al. 2020, "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust
Classifiers", CVPR workshops): the partner blends in through a soft Gaussian mask.

The partner's weight at a pixel is ``exp(-d^2 / (2 sigma^2))``, ``d`` the distance to a centre drawn
uniformly in the image and ``sigma ~ U(sigma_min, sigma_max) * side`` (the paper's 0.25 and 0.5),
built on the device as the outer product of a row and a column Gaussian. There is no Beta draw:
the mask sets the mix. The target weight is the mask's mean, so a soft mask is exact too; with
``symmetric_lam`` a mask that would give the partner more than half is inverted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import require
from mixtrain.mixing.masks import MaskMixer
from mixtrain.mixing.method import entries, mixing, pair_sources, register_method, spec_of
from mixtrain.mixing.plans import MixPlan, MixSpec


@dataclass
class SmoothMixConfig(MixConfig):
    """SmoothMix (Lee et al. 2020): the partner blends in through a Gaussian mask of sigma ~ U(sigma_min, sigma_max) x side."""

    name: str = "smoothmix"
    sigma_min: float = 0.25  # smallest Gaussian width of the mask, a fraction of the image side
    sigma_max: float = 0.5  # largest Gaussian width of the mask, a fraction of the image side

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.sigma_min <= self.sigma_max, "augment.sigma_min/sigma_max",
                "must be 0 < sigma_min <= sigma_max (fractions of the image side)", [self.sigma_min, self.sigma_max])

    def spec(self) -> MixSpec:
        # The plan rule only decides partners and which entries mix (prob); the mask sets the weights. Its
        # uniform draw goes unused: drawn still, it keeps the random stream (and results) of earlier runs.
        return spec_of(self, lam_draw="uniform")


def gaussian_masks(centres: torch.Tensor, sigmas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[n, 1, H, W]`` Gaussian bumps of height 1 at ``centres`` (``[n, 2]``, pixel units), ``sigmas`` ``[n]``."""
    rows = torch.arange(height, device=centres.device, dtype=torch.float32) + 0.5
    cols = torch.arange(width, device=centres.device, dtype=torch.float32) + 0.5
    scale = 2.0 * sigmas[:, None] ** 2
    row = torch.exp(-(rows[None, :] - centres[:, :1]) ** 2 / scale)
    col = torch.exp(-(cols[None, :] - centres[:, 1:]) ** 2 / scale)
    return (row[:, :, None] * col[:, None, :])[:, None]


class SmoothMixMixer(MaskMixer):
    def masks(self, plan: MixPlan, images: torch.Tensor) -> torch.Tensor:
        cfg, (height, width) = self.cfg, images.shape[-2:]
        n = entries(plan)
        uniform = self.rng.random((n, 3))
        centres = uniform[:, :2] * np.array([height, width])
        sigmas = (cfg.sigma_min + uniform[:, 2] * (cfg.sigma_max - cfg.sigma_min)) * max(height, width)
        if plan.shared:  # one mask for the batch, made on the host
            rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
            scale = 2.0 * sigmas[0] ** 2
            mask = np.outer(np.exp(-(rows - centres[0, 0]) ** 2 / scale), np.exp(-(cols - centres[0, 1]) ** 2 / scale))
            if cfg.symmetric_lam and mask.mean() > 0.5:
                mask = 1.0 - mask
            return mask.astype(np.float32)
        source = pair_sources(plan, self.cfg.mode)
        centres, sigmas = centres[source], sigmas[source]
        masks = gaussian_masks(torch.from_numpy(centres).float().to(images.device),
                               torch.from_numpy(sigmas).float().to(images.device), height, width)
        if cfg.symmetric_lam:  # the sample keeps the larger share
            masks = torch.where(masks.mean(dim=(1, 2, 3), keepdim=True) > 0.5, 1.0 - masks, masks)
        return masks * torch.from_numpy(mixing(plan)).to(images.device).view(-1, 1, 1, 1)


register_method("smoothmix", SmoothMixConfig, SmoothMixMixer,
                label=lambda cfg: f"smoothmix s={cfg.sigma_min:g}-{cfg.sigma_max:g}")
