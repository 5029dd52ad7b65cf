"""Random erasing (Zhong et al. 2020) on a whole normalized batch at once, on its device.

The rule is timm's ``RandomErasing`` (``--reprob``, ``--remode``, ``--recount``): each image
is erased with probability ``p``; it gets 1..``count`` boxes, each of a target area drawn
uniformly in [2%, 33%] of the image divided by the count and a log-uniform aspect ratio
in [0.3, 1/0.3], retried up to 10 times until the box fits, placed uniformly, and filled
with zeros (``const``), one normal colour per box (``rand``) or normal noise (``pixel``)
in normalized units. timm loops over the images of a batch in Python; here every draw is
a tensor over the batch, and the boxes become one mask (an outer product of row and column
ranges, as for CutMix), so a batch costs a handful of operations whatever its size.

Every draw comes from a generator seeded by (seed, epoch, step, rank): a resumed run
erases the same boxes.
"""

from __future__ import annotations

import math

import torch

ATTEMPTS = 10
MIN_AREA, MAX_AREA, MIN_ASPECT = 0.02, 1 / 3, 0.3


def batch_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """A seed of its own for one batch of one epoch of one rank."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + step) * 7919 + rank) % (2**63 - 1)


def erasing_boxes(batch: int, height: int, width: int, p: float, count: int, generator: torch.Generator):
    """``(boxes [B, count, 4] as y0, y1, x0, x1, used [B, count])`` drawn by timm's rule."""
    erase = torch.rand(batch, generator=generator) < p
    counts = torch.randint(1, count + 1, (batch,), generator=generator)
    area = torch.empty(batch, count, ATTEMPTS, dtype=torch.float64).uniform_(MIN_AREA, MAX_AREA, generator=generator)
    area = area * height * width / counts.view(-1, 1, 1)
    log_aspect = torch.empty(batch, count, ATTEMPTS, dtype=torch.float64).uniform_(
        math.log(MIN_ASPECT), -math.log(MIN_ASPECT), generator=generator)
    h = torch.round(torch.sqrt(area * log_aspect.exp())).long()
    w = torch.round(torch.sqrt(area / log_aspect.exp())).long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(-1, keepdim=True)  # the first attempt that fits (timm's retry loop)
    h, w = h.gather(-1, first).squeeze(-1), w.gather(-1, first).squeeze(-1)
    found = fits.any(-1)
    where = torch.rand(batch, count, 2, generator=generator, dtype=torch.float64)
    top = (where[..., 0] * (height - h + 1)).long()
    left = (where[..., 1] * (width - w + 1)).long()
    used = erase.view(-1, 1) & found & (torch.arange(count).view(1, -1) < counts.view(-1, 1))
    return torch.stack([top, top + h, left, left + w], -1), used


class RandomErasing:
    """Erase boxes of a normalized ``[B, C, H, W]`` batch, in place (a no-op with ``p=0``)."""

    def __init__(self, p: float, mode: str = "pixel", count: int = 1, seed: int = 0, rank: int = 0) -> None:
        self.p, self.mode, self.count, self.seed, self.rank = p, mode, count, seed, rank

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        if self.p <= 0:
            return images
        b, c, height, width = images.shape
        g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, step, self.rank))
        boxes, used = erasing_boxes(b, height, width, self.p, self.count, g)
        device = images.device
        rows, cols = torch.arange(height), torch.arange(width)
        noise_g = torch.Generator(device=device).manual_seed(batch_seed(self.seed, epoch, step, self.rank) + 1)
        for k in range(self.count):
            y0, y1, x0, x1 = (boxes[:, k, i:i + 1] for i in range(4))
            row = (rows >= y0) & (rows < y1) & used[:, k:k + 1]
            col = (cols >= x0) & (cols < x1)
            mask = (row.unsqueeze(2) & col.unsqueeze(1)).unsqueeze(1).to(device, non_blocking=True)  # [B, 1, H, W]
            if self.mode == "const":
                images.masked_fill_(mask, 0.0)
                continue
            shape = (b, c, 1, 1) if self.mode == "rand" else images.shape
            fill = torch.randn(shape, generator=noise_g, device=device, dtype=images.dtype)
            images.copy_(torch.where(mask, fill, images))  # copy_ keeps the batch's memory format
        return images
