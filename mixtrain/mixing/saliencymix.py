"""SaliencyMix (Uddin et al. 2021, "SaliencyMix: A Saliency Guided Data Augmentation Strategy for
Better Regularization", ICLR): CutMix's box, centred on the partner's most salient pixel.

The box side and the target weight are CutMix's: side ``sqrt(1 - lam) * size`` with
``lam ~ Beta(alpha, alpha)``, clipped at the border, the target weight the exact kept area. The
saliency is the spectral residual (Hou & Zhang 2007) of each partner's grey image, computed in
torch on the device for the whole batch: the log amplitude spectrum minus its 3x3 local mean,
back to pixels with the original phase, squared and blurred (a Gaussian of sigma = side / 16,
applied in the Fourier domain).
The paper uses OpenCV's fine-grained saliency; mixtrain needs no OpenCV. In batch mode, as in
the paper's code, one box for the batch, on the saliency of the first sample's partner (on the
CPU found on the host, in NumPy, and copied as CutMix's box is: the same rule, fewer ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import at_least
from mixtrain.mixing.apply import mix_images, mix_targets
from mixtrain.mixing.masks import MaskMixer
from mixtrain.mixing.method import pair_sources, register_method, spec_of
from mixtrain.mixing.plans import MixPlan, MixSpec


@dataclass
class SaliencyMixConfig(MixConfig):
    """SaliencyMix (Uddin et al. 2021): CutMix's box, centred on the partner's most salient pixel."""

    name: str = "saliencymix"
    alpha: float = 1.0  # the paper's value

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.alpha, 0.0, "augment.alpha")

    def spec(self) -> MixSpec:
        return spec_of(self, mixup_alpha=self.alpha)


def box_around(centre: np.ndarray, lam: float, height: int, width: int):
    """CutMix's box (side ``sqrt(1 - lam) * size``, clipped at the border) around ``centre``:
    ``((y_low, x_low), (y_high, x_high))``."""
    size = np.array([height, width])
    cut = (size * np.sqrt(1.0 - lam)).astype(np.int64)
    return np.maximum(centre - cut // 2, 0).tolist(), np.minimum(centre + (cut + 1) // 2, size).tolist()


@lru_cache(maxsize=16)
def blur_spectrum(height: int, width: int, sigma: float, xp=np):
    """``[H, W]``: the transfer function of a Gaussian blur of ``sigma`` pixels (circular), analytic:
    ``exp(-2 pi^2 sigma^2 f^2)``. ``xp``: numpy, or torch (then a float32 tensor on the CPU)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    otf = np.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx * fx + fy * fy))
    return otf if xp is np else torch.from_numpy(otf.astype(np.float32))


def spectral_residual_saliency(images: torch.Tensor) -> torch.Tensor:
    """``[n, H, W]`` saliency maps of ``[n, C, H, W]`` images (Hou & Zhang 2007), batched: the log
    amplitude spectrum minus its 3x3 mean (the spectrum is periodic: a circular mean), back to
    pixels with the original phase, squared, and blurred in the Fourier domain (sigma = side / 16)."""
    grey = images.float().mean(dim=1)
    height, width = grey.shape[-2:]
    spectrum = torch.fft.fft2(grey)
    log_amplitude = torch.log(spectrum.abs().clamp_min(1e-8))
    local_mean = F.avg_pool2d(F.pad(log_amplitude[:, None], (1, 1, 1, 1), mode="circular"), 3, stride=1)[:, 0]
    residual = torch.polar(torch.exp(log_amplitude - local_mean), torch.angle(spectrum))
    saliency = torch.fft.ifft2(residual).abs() ** 2
    otf = blur_spectrum(height, width, max(height, width) / 16, torch).to(images.device)
    return torch.fft.ifft2(torch.fft.fft2(saliency) * otf).real


def salient_points(images: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` (row, column) of each image's most salient pixel."""
    saliency = spectral_residual_saliency(images)
    flat = saliency.flatten(1).argmax(dim=1)
    width = images.shape[-1]
    return torch.stack([flat // width, flat % width], dim=1)


def host_salient_point(image: np.ndarray) -> np.ndarray:
    """(row, column) of one ``[C, H, W]`` image's most salient pixel: :func:`spectral_residual_saliency`
    in NumPy, for one image on the host (a few microseconds an op where torch takes tens)."""
    grey = image.astype(np.float32).mean(axis=0)
    height, width = grey.shape
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.maximum(np.abs(spectrum), 1e-8))
    padded = np.pad(log_amplitude, 1, mode="wrap")
    local_mean = sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)) / 9
    residual = np.exp(log_amplitude - local_mean + 1j * np.angle(spectrum))
    saliency = np.abs(np.fft.ifft2(residual)) ** 2
    blurred = np.fft.ifft2(np.fft.fft2(saliency) * blur_spectrum(height, width, max(height, width) / 16)).real
    return np.array(np.unravel_index(np.argmax(blurred), blurred.shape))


class SaliencyMixMixer(MaskMixer):
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        if images.device.type != "cpu" or self.cfg.mode != "batch" or not self.active(epoch):
            return super().__call__(images, labels, epoch)
        # Batch mode on the CPU: one box for the batch, found on the host and copied as CutMix's is.
        targets = self.targets(labels)
        height, width = images.shape[-2:]
        plan = self.draw_plan(images.shape[0], height, width)
        if plan.is_identity:
            return images, targets
        centre = host_salient_point(images[int(plan.partner[0])].numpy())
        (y0, x0), (y1, x1) = box_around(centre, float(plan.lam[0]), height, width)
        kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        boxed = MixPlan(plan.partner, torch.tensor([kept], dtype=torch.float64), torch.tensor([True]),
                        torch.tensor([[y0, y1, x0, x1]]), shared=True)
        return mix_images(images, boxed, inplace=True), mix_targets(targets, boxed)

    def masks(self, plan: MixPlan, images: torch.Tensor) -> torch.Tensor:
        """CutMix's boxes around the partners' salient points, as masks, on the device."""
        (height, width), device = images.shape[-2:], images.device
        partners = plan.partner[:1] if plan.shared else plan.partner  # batch mode: the first sample's partner
        centres = salient_points(images.index_select(0, partners.to(device)))
        if not plan.shared:
            centres = centres[torch.from_numpy(pair_sources(plan, self.cfg.mode)).to(device)]
        size = np.array([height, width])
        cut = torch.from_numpy((size * np.sqrt(1.0 - plan.lam.numpy())[:, None]).astype(np.int64)).to(device)
        low = (centres - cut // 2).clamp_min(0)
        high = torch.minimum(centres + (cut + 1) // 2, torch.tensor([height, width], device=device))
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        inside_rows = (rows[None, :] >= low[:, :1]) & (rows[None, :] < high[:, :1])
        inside_cols = (cols[None, :] >= low[:, 1:]) & (cols[None, :] < high[:, 1:])
        return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


register_method("saliencymix", SaliencyMixConfig, SaliencyMixMixer)
