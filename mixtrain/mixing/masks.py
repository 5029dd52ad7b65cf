"""Mixing by a per-pixel mask: the base of FMix, ResizeMix, SaliencyMix and SmoothMix.

Partners, lambdas and which samples mix come from the one plan rule (:func:`draw_plan`: batch,
pair or elem mode, ``prob``, ``symmetric_lam``); a method turns each plan entry into a mask on
the device (one entry in batch mode, broadcast to the batch; one per sample otherwise, the two
members of a pair sharing theirs). A sample's target weight is the exact share of its own
pixels in the mixed image (the mean of ``1 - mask``; for a soft mask, the weighted share), so
a target row is the provenance of the image's pixels. Masks and weights stay on the device:
the host reads no device value (the plan is drawn on the host, from the mixer's generator).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from mixtrain.mixing.method import Mixer
from mixtrain.mixing.plans import MixPlan


def mix_by_weights(images: torch.Tensor, targets: torch.Tensor, partner: torch.Tensor, weights: torch.Tensor,
                   source: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``images`` (in place) toward ``source`` by ``weights`` (``[n, 1, H, W]``, n = 1 or B), and the
    targets by each sample's exact share of its own pixels, on the device."""
    lam = 1.0 - weights.float().mean(dim=(1, 2, 3))
    mixed = images.lerp_(source, weights.to(images.dtype))
    other = targets.index_select(0, partner)
    return mixed, other.lerp_(targets, lam.to(targets.dtype).view(-1, 1))


class MaskMixer(Mixer):
    """Draws the plan, asks :meth:`masks` for the partners' weights and mixes images and targets by them.

    A method overrides :meth:`masks` (and :meth:`partner_images` to paste something other than
    the partner itself, e.g. ResizeMix's resized partner).
    """

    def masks(self, plan: MixPlan, images: torch.Tensor):
        """``[n, 1, H, W]`` weight of the partner at each pixel (0: the sample's own pixel), on the device,
        for the ``n`` entries of ``plan``; all zeros for an entry that does not mix. A shared (batch
        mode) plan's one mask may come as an ``[H, W]`` NumPy array made on the host instead."""
        raise NotImplementedError

    def partner_images(self, plan: MixPlan, images: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return other

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        plan = self.draw_plan(images.shape[0], *images.shape[-2:])
        if plan.is_identity:
            return images, targets
        partner = plan.partner.to(images.device)
        other = images.index_select(0, partner)
        weights = self.masks(plan, images)
        if isinstance(weights, np.ndarray):  # the batch's one mask, from the host: its share is known there
            lam = 1.0 - float(weights.mean(dtype=np.float64))
            mask = torch.from_numpy(weights).to(images.device, images.dtype, non_blocking=True)
            mixed = images.lerp_(self.partner_images(plan, images, other), mask)
            return mixed, targets.index_select(0, partner).lerp_(targets, lam)
        return mix_by_weights(images, targets, partner, weights, self.partner_images(plan, images, other))
