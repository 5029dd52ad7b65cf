"""FMix (Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation"): the partner fills a
low-frequency region of the image.

Each mask starts as noise in Fourier space whose amplitude falls as ``1 / f ** decay_power``,
taken back to pixels (a smooth random field); the partner takes the pixels where the field is
highest, exactly ``round((1 - lam) * H * W)`` of them, with ``lam ~ Beta(alpha, alpha)`` the
weight of the sample's own image (so with ``symmetric_lam`` the sample keeps the larger part).
One mask per batch (batch mode) is made on the host with NumPy (a few microseconds per op);
one per sample is made on the device for the whole batch at once (one ``irfft2``, one
``argsort``). The target weight is the exact kept area; FMix's own code uses the drawn lambda,
which differs from it by less than one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import at_least, require
from mixtrain.mixing.masks import MaskMixer
from mixtrain.mixing.method import pair_sources, register_method, spec_of, torch_generator
from mixtrain.mixing.plans import MixPlan, MixSpec


@dataclass
class FMixConfig(MixConfig):
    """FMix (Harris et al. 2020): the partner fills a low-frequency region of area 1 - lam, lam ~ Beta(alpha, alpha)."""

    name: str = "fmix"
    alpha: float = 1.0  # the paper's CIFAR value
    decay_power: float = 3.0  # amplitude ~ 1 / f ** decay_power: larger, smoother regions (the paper's 3)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")
        require(self.decay_power > 0, "augment.decay_power", "must be > 0", self.decay_power)

    def spec(self) -> MixSpec:
        return spec_of(self, mixup_alpha=self.alpha)


@lru_cache(maxsize=16)
def frequency_scale(height: int, width: int, decay_power: float) -> np.ndarray:
    """``[H, W // 2 + 1]`` amplitude of each frequency of a real field (FMix's ``get_spectrum``)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return (1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power).astype(np.float32)


def top_counts(plan: MixPlan, pixels: int) -> np.ndarray:
    """How many pixels each entry's partner takes: ``round((1 - lam) * H * W)``."""
    return np.round((1.0 - plan.lam.numpy()) * pixels).astype(np.int64)


def host_mask(rng: np.random.Generator, count: int, height: int, width: int, decay_power: float) -> np.ndarray:
    """One ``[H, W]`` mask on the host: 1 on the ``count`` highest pixels of a low-frequency field."""
    scale = frequency_scale(height, width, decay_power)
    spectrum = rng.standard_normal((*scale.shape, 2), dtype=np.float32) * scale[..., None]
    field = np.fft.irfft2(spectrum[..., 0] + 1j * spectrum[..., 1], s=(height, width))
    mask = np.zeros(height * width, dtype=np.float32)
    mask[np.argsort(-field, axis=None, kind="stable")[:count]] = 1.0
    return mask.reshape(height, width)


def device_masks(generator: torch.Generator, counts: torch.Tensor, height: int, width: int, decay_power: float,
                 device: torch.device) -> torch.Tensor:
    """``[n, 1, H, W]`` masks, made on ``device`` for all ``n`` entries at once."""
    scale = torch.from_numpy(frequency_scale(height, width, decay_power)).to(device)
    spectrum = torch.randn((len(counts), *scale.shape, 2), generator=generator, device=device) * scale[..., None]
    fields = torch.fft.irfft2(torch.view_as_complex(spectrum), s=(height, width)).flatten(1)
    order = fields.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(height * width, device=device).expand_as(order))
    return (ranks < counts.to(device)[:, None]).view(-1, 1, height, width)


class FMixMixer(MaskMixer):
    def masks(self, plan: MixPlan, images: torch.Tensor) -> torch.Tensor:
        (height, width), decay = images.shape[-2:], self.cfg.decay_power
        counts = top_counts(plan, height * width)
        if plan.shared:
            return host_mask(self.rng, int(counts[0]), height, width, decay)
        masks = device_masks(torch_generator(self.rng, images.device), torch.from_numpy(counts), height, width, decay,
                             images.device)
        return masks[torch.from_numpy(pair_sources(plan, self.cfg.mode)).to(images.device)]


register_method("fmix", FMixConfig, FMixMixer)
