"""FMix (Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation"): the partner fills a
low-frequency region of the image.

Each mask starts as noise in Fourier space whose amplitude falls as ``1 / f ** decay_power``,
taken back to pixels (a smooth random field); the partner takes the pixels where the field is
highest, exactly ``round((1 - lam) * H * W)`` of them, with ``lam ~ Beta(alpha, alpha)`` the
weight of the sample's own image (so with ``symmetric_lam`` the sample keeps the larger part).
The field is drawn on the device for the whole batch at once (one ``irfft2``, one ``argsort``).
The target weight is the exact kept area; FMix's own code uses the drawn lambda, which differs
from it by less than one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import at_least, require
from mixtrain.mixing.masks import MaskMixer, entries, pair_sources, torch_generator
from mixtrain.mixing.method import register_method
from mixtrain.mixing.mixup import spec_of
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
        return spec_of(self, self.alpha, 0.0, 0.0)


def frequency_scale(height: int, width: int, decay_power: float, device: torch.device) -> torch.Tensor:
    """``[H, W // 2 + 1]`` amplitude of each frequency of a real field (FMix's ``get_spectrum``)."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power


def low_frequency_fields(n: int, height: int, width: int, decay_power: float, generator: torch.Generator,
                         device: torch.device) -> torch.Tensor:
    """``[n, H, W]`` smooth random fields: Gaussian spectra scaled by the decay, back to pixels."""
    scale = frequency_scale(height, width, decay_power, device)
    spectrum = torch.randn((n, *scale.shape, 2), generator=generator, device=device) * scale[..., None]
    return torch.fft.irfft2(torch.view_as_complex(spectrum), s=(height, width))


def top_fraction_masks(fields: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[n, 1, H, W]``: 1 on the ``counts[i]`` highest pixels of field ``i``, 0 elsewhere."""
    n, height, width = fields.shape
    order = fields.reshape(n, -1).argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(height * width, device=fields.device).expand(n, -1))
    return (ranks < counts.to(fields.device)[:, None]).reshape(n, 1, height, width)


class FMixMixer(MaskMixer):
    def masks(self, plan: MixPlan, images: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        fields = low_frequency_fields(entries(plan), height, width, self.cfg.decay_power,
                                      torch_generator(self.rng, images.device), images.device)
        if not plan.shared:  # a pair shares one mask
            fields = fields[torch.from_numpy(pair_sources(plan, self.cfg.mode)).to(images.device)]
        counts = torch.round((1.0 - plan.lam) * height * width).long()
        return top_fraction_masks(fields, counts)


register_method("fmix", FMixConfig, FMixMixer)
