"""SaliencyMix (Uddin et al. 2021, "SaliencyMix: A Saliency Guided Data Augmentation Strategy for
Better Regularization", ICLR): CutMix's box, centred on the partner's most salient pixel.

The box side and the target weight are CutMix's: side ``sqrt(1 - lam) * size`` with
``lam ~ Beta(alpha, alpha)``, clipped at the border, the target weight the exact kept area. The
saliency is the spectral residual (Hou & Zhang 2007) of each partner's grey image, computed in
torch on the device for the whole batch: the log amplitude spectrum minus its 3x3 local mean,
back to pixels with the original phase, squared and blurred (a Gaussian of sigma = side / 16).
The paper uses OpenCV's fine-grained saliency; mixtrain needs no OpenCV. In batch mode, as in
the paper's code, one box for the batch, on the saliency of the first sample's partner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import at_least
from mixtrain.mixing.masks import pair_sources
from mixtrain.mixing.method import register_method
from mixtrain.mixing.mixup import Mixer, spec_of
from mixtrain.mixing.plans import MixPlan, MixSpec, mix_images, mix_targets


@dataclass
class SaliencyMixConfig(MixConfig):
    """SaliencyMix (Uddin et al. 2021): CutMix's box, centred on the partner's most salient pixel."""

    name: str = "saliencymix"
    alpha: float = 1.0  # the paper's value

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")

    def spec(self) -> MixSpec:
        return spec_of(self, self.alpha, 0.0, 0.0)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[n, H, W]`` blurred by a separable Gaussian (reflect padding)."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-x * x / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    out = images[:, None]
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def spectral_residual_saliency(images: torch.Tensor) -> torch.Tensor:
    """``[n, H, W]`` saliency maps of ``[n, C, H, W]`` images (Hou & Zhang 2007), batched."""
    grey = images.float().mean(dim=1)
    spectrum = torch.fft.fft2(grey)
    log_amplitude = torch.log(spectrum.abs().clamp_min(1e-8))
    local_mean = F.avg_pool2d(log_amplitude[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    residual = torch.polar(torch.exp(log_amplitude - local_mean), torch.angle(spectrum))
    saliency = torch.fft.ifft2(residual).abs() ** 2
    return gaussian_blur(saliency, max(grey.shape[-2:]) / 16)


def salient_points(images: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` (row, column) of each image's most salient pixel."""
    saliency = spectral_residual_saliency(images)
    flat = saliency.flatten(1).argmax(dim=1)
    width = images.shape[-1]
    return torch.stack([flat // width, flat % width], dim=1)


def centred_boxes(lam: np.ndarray, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """CutMix's boxes (side ``sqrt(1 - lam) * size``, clipped at the border) around given centres."""
    size = np.array([height, width])
    cut = (size * np.sqrt(1.0 - lam)[:, None]).astype(np.int64)
    low = np.maximum(centres - cut // 2, 0)
    high = np.minimum(centres + (cut + 1) // 2, size)
    return np.concatenate([low, high], axis=1)[:, [0, 2, 1, 3]]


class SaliencyMixMixer(Mixer):
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        height, width = images.shape[-2:]
        plan = self.draw_plan(images.shape[0], height, width)
        if plan.is_identity:
            return images, targets
        lam = plan.lam.numpy()
        partners = plan.partner[:1] if plan.shared else plan.partner  # batch mode: the first sample's partner
        centres = salient_points(images.index_select(0, partners.to(images.device))).cpu().numpy()
        if not plan.shared:
            centres = centres[pair_sources(plan, self.cfg.mode)]
        boxes = centred_boxes(lam, centres, height, width) * (lam < 1.0)[:, None]
        kept = 1.0 - (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / (height * width)
        boxed = MixPlan(plan.partner, torch.from_numpy(kept), torch.from_numpy(lam < 1.0), torch.from_numpy(boxes),
                        plan.shared)
        return mix_images(images, boxed, inplace=True), mix_targets(targets, boxed)


register_method("saliencymix", SaliencyMixConfig, SaliencyMixMixer)
