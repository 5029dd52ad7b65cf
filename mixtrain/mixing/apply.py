"""Applying a mix plan (:mod:`mixtrain.mixing.plans`) to images and targets: pure functions, no
random choice left.

Conventions (timm's): targets are one-hot vectors, label-smoothed *before* mixing; ``lam`` is
the weight of a sample's own image and label, ``1 - lam`` its partner's (a plan of ``k``
partners: ``weights[j]`` the share of source ``j``, the sample's own first).
"""

from __future__ import annotations

import numpy as np
import torch

from mixtrain.mixing.plans import MixPlan


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float targets ``[B, C]``; with smoothing, ``1 - s + s/C`` on the label and ``s/C`` elsewhere (timm)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def partner_weights(plan: MixPlan, height: int, width: int, device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, H, W]`` weight of the partner at every pixel: ``1 - lam`` for a blend,
    1 inside the box and 0 outside it for CutMix.

    Built as an outer product of a row weight ``[B, H]`` and a column weight ``[B, W]``
    (a box is the product of its row range and its column range; a blend is ``1 x (1 - lam)``),
    so only the final product, on the device, touches ``B * H * W`` elements.
    """
    boxes, cutmix = plan.boxes.cpu().numpy(), plan.cutmix.cpu().numpy()[:, None]
    rows, cols = np.arange(height), np.arange(width)
    row_weight = np.where(cutmix, (rows >= boxes[:, 0:1]) & (rows < boxes[:, 1:2]), 1.0)
    col_weight = np.where(cutmix, (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4]),
                          1.0 - plan.lam.cpu().numpy()[:, None])
    row_weight, col_weight = (torch.from_numpy(w).to(device=device, dtype=dtype) for w in (row_weight, col_weight))
    return (row_weight.unsqueeze(2) * col_weight.unsqueeze(1)).unsqueeze(1)


def mix_images(images: torch.Tensor, plan: MixPlan, inplace: bool = False) -> torch.Tensor:
    """Apply a plan's blends and boxes to ``[B, C, H, W]`` images (or hidden features).

    Per-sample plans become one per-pixel weight map ``w`` (``1 - lam`` for a blend, 1
    inside a box and 0 outside it for CutMix) and a single ``lerp(x, partner, w)``:
    one pass over the batch whatever the mix of kinds, no loop over samples.
    ``inplace=True`` writes into ``images`` (the training loop's fresh batch) and saves a
    full-size copy; never use it on a tensor autograd still needs. A plan of ``k`` partners:
    :func:`mix_sources`.
    """
    if plan.is_identity:
        return images
    if plan.partner.dim() > 1:
        return mix_sources(images, plan, inplace)
    device = images.device
    out = images if inplace else images.clone()
    if plan.shared:  # one box or one scalar for the batch: copies only the box, builds no weight map
        if plan.cutmix.numpy()[0]:
            y_low, y_high, x_low, x_high = plan.boxes.numpy()[0].tolist()
            other = images.index_select(0, plan.partner.to(device))  # whole partners: faster than a strided box
            out[:, :, y_low:y_high, x_low:x_high] = other[:, :, y_low:y_high, x_low:x_high]
            return out
        return out.lerp_(images.index_select(0, plan.partner.to(device)), 1.0 - float(plan.lam.numpy()[0]))
    other = images.index_select(0, plan.partner.to(device))  # whole partners: faster than a strided box
    if plan.cutmix.any():
        weight = partner_weights(plan, *images.shape[-2:], device, images.dtype)
    else:
        weight = (1.0 - plan.lam).to(device=device, dtype=images.dtype).view(-1, 1, 1, 1)
    return out.lerp_(other, weight)


def mix_targets(targets: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """``lam * targets + (1 - lam) * targets[partner]`` (``k`` partners: each source's row by its weight):
    still a distribution per row."""
    if plan.is_identity:
        return targets
    if plan.partner.dim() > 1:  # k partners: the weighted sum of the k + 1 sources' rows
        weights = plan.weights.to(device=targets.device, dtype=targets.dtype)
        out = targets * weights[0].view(-1, 1)
        for partner, weight in zip(plan.partner.to(targets.device), weights[1:]):
            out.addcmul_(targets.index_select(0, partner), weight.view(-1, 1))
        return out
    other = targets.index_select(0, plan.partner.to(targets.device))
    if plan.shared:
        return other.lerp_(targets, float(plan.lam.numpy()[0]))
    return other.lerp_(targets, plan.lam.to(device=targets.device, dtype=targets.dtype).view(-1, 1))


def source_weights(plan: MixPlan, height: int, width: int, device: torch.device, dtype: torch.dtype):
    """``[k + 1, n, 1, H, W]`` weight of each source at every pixel, the sample's own first (a blend's:
    ``[k + 1, n, 1, 1, 1]``); the partners' as outer products of row and column weights, as in
    :func:`partner_weights`, and the sample keeps what its partners' regions leave."""
    weights = plan.weights.to(device=device, dtype=dtype)
    if not plan.cutmix.any():
        return weights.view(*weights.shape, 1, 1, 1)
    boxes, regions = plan.boxes.numpy(), plan.cutmix.numpy()[None, :, None]  # [k, n, 4], [1, n, 1]
    rows, cols = np.arange(height), np.arange(width)
    row = np.where(regions, (rows >= boxes[..., 0:1]) & (rows < boxes[..., 1:2]), 1.0)
    col = np.where(regions, (cols >= boxes[..., 2:3]) & (cols < boxes[..., 3:4]), plan.weights.numpy()[1:, :, None])
    row, col = (torch.from_numpy(w).to(device=device, dtype=dtype) for w in (row, col))
    partners = row.unsqueeze(-1) * col.unsqueeze(-2)  # [k, n, H, W]
    own = torch.where(plan.cutmix.to(device).view(-1, 1, 1), 1.0 - partners.sum(0), weights[0].view(-1, 1, 1))
    return torch.cat([own.unsqueeze(0), partners]).unsqueeze(2)


def mix_sources(images: torch.Tensor, plan: MixPlan, inplace: bool = False) -> torch.Tensor:
    """Apply a plan of ``k`` partners: each pixel the weighted sum of its ``k + 1`` sources (a region's
    pixel comes whole from one source: a weight of 1, the others 0). One batch's regions (``mode=batch``)
    are copied box by box, in place when asked (the boxes are disjoint, so none reads a pixel already
    written); otherwise the sum goes to a new tensor."""
    partners = plan.partner.to(images.device)
    if plan.shared and bool(plan.cutmix[0]):
        out = images if inplace else images.clone()
        for partner, (y_low, y_high, x_low, x_high) in zip(partners, plan.boxes[:, 0].tolist()):
            # Only the box of each partner: with several boxes, whole partners cost 5x more at 224 px
            out[:, :, y_low:y_high, x_low:x_high] = images[:, :, y_low:y_high, x_low:x_high].index_select(0, partner)
        return out
    weights = source_weights(plan, *images.shape[-2:], images.device, images.dtype)
    out = images * weights[0]
    for partner, weight in zip(partners, weights[1:]):
        out.addcmul_(images.index_select(0, partner), weight)
    return out
