"""Mixing by a per-pixel mask: the base of FMix, ResizeMix, SaliencyMix and SmoothMix.

Partners, lambdas and which samples mix come from the one plan rule (:func:`draw_plan`: batch,
pair or elem mode, ``prob``, ``symmetric_lam``); a method turns each plan entry into a mask on
the device (one entry in batch mode, broadcast to the batch; one per sample otherwise, the two
members of a pair sharing theirs). A sample's target weight is the exact share of its own
pixels in the mixed image (the mean of ``1 - mask``; for a soft mask, the weighted share), so
a target row is the provenance of the image's pixels.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from mixtrain.mixing.mixup import Mixer
from mixtrain.mixing.plans import MixPlan, draw_plan, mix_targets


def entries(plan: MixPlan) -> int:
    """How many masks a plan needs: one for a shared (batch-mode) plan, else one per sample."""
    return 1 if plan.shared else len(plan.partner)


def pair_sources(plan: MixPlan, mode: str) -> np.ndarray:
    """For each sample, the sample whose random choices it uses: in pair mode the second member of
    a pair (the larger index) copies the first's, so a pair shares one mask; otherwise itself."""
    partner = plan.partner.numpy()
    own = np.arange(len(partner))
    return np.where(partner < own, partner, own) if mode == "pair" else own


class MaskMixer(Mixer):
    """Draws the plan, asks :meth:`masks` for the partners' weights and mixes images and targets by them.

    A method overrides :meth:`masks` (and :meth:`partner_images` to paste something other than
    the partner itself, e.g. ResizeMix's resized partner).
    """

    def masks(self, plan: MixPlan, images: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``[n, 1, H, W]`` weight of the partner at each pixel (0: the sample's own pixel), on the device,
        for the ``n`` entries of ``plan``; all zeros for an entry that does not mix."""
        raise NotImplementedError

    def partner_images(self, plan: MixPlan, images: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return other

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        plan = draw_plan(self.spec, self.rng, images.shape[0], *images.shape[-2:])
        if plan.is_identity:
            return images, targets
        other = images.index_select(0, plan.partner.to(images.device))
        weights = self.masks(plan, images, other).to(images.dtype)
        mixed = images.lerp_(self.partner_images(plan, images, other), weights)
        # The exact share of each sample's own pixels, from the very weights that mixed it.
        lam = 1.0 - weights.double().mean(dim=(1, 2, 3)).cpu()
        exact = MixPlan(plan.partner, lam, torch.zeros(len(lam), dtype=torch.bool), torch.zeros(len(lam), 4,
                        dtype=torch.int64), shared=plan.shared)
        return mixed, mix_targets(targets, exact)


def unmixed(plan: MixPlan) -> torch.Tensor:
    """``[n]`` bool: the plan entries that do not mix (their lambda is 1)."""
    return plan.lam == 1.0


def torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from the mixer's NumPy stream: draws made with it on the
    device are as resumable as the stream (its state is in every checkpoint)."""
    return torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
