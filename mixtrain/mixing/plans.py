"""Mix plans: every random choice for one batch, drawn by one rule for every mode, and their
application to images and targets.

Two layers, as in composer's mixup: :func:`draw_plan` makes every random choice (a
:class:`MixPlan`: partners, lambdas, which samples use CutMix, their boxes) from a
normalized :class:`MixSpec` and a NumPy generator, and pure functions apply a plan. Tests
inject plans; training draws them.

Conventions (timm's): targets are one-hot vectors, label-smoothed *before* mixing;
``lam`` is the weight of a sample's own image and label, ``1 - lam`` its partner's.
For CutMix the partner's pixels fill a box and, with ``correct_lam`` (default), ``lam``
is the exact fraction of the sample's own pixels left after the box is clipped at the
image border (Yun et al. 2019 compute lambda from the area they paste, Sec. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from mixtrain.config.augment import AugmentConfig


@dataclass(frozen=True)
class MixSpec:
    """Every augment config in one form: what :func:`draw_plan` needs, nothing else.

    A sample (or pair, or batch) is mixed with probability ``prob``; it uses CutMix with
    probability ``switch_prob`` when both alphas are on, else the one that is on; its
    lambda is Beta(alpha, alpha) of that kind (timm's ``Mixup`` arguments).
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    prob: float = 1.0
    mode: str = "batch"
    minmax: Optional[Tuple[float, float]] = None
    correct_lam: bool = True
    symmetric: bool = False


def mix_spec(cfg: AugmentConfig) -> MixSpec:
    """The :class:`MixSpec` of an augment config: its ``spec()``, or one that never mixes (``none``)."""
    spec = getattr(cfg, "spec", None)
    return spec() if spec is not None else MixSpec(prob=0.0)


# --------------------------------------------------------------------------- drawing


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float targets ``[B, C]``; with smoothing, ``1 - s + s/C`` on the label and ``s/C`` elsewhere (timm)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def cutmix_boxes(lam: np.ndarray, height: int, width: int, uniform: np.ndarray,
                 minmax: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """CutMix boxes ``[n, 4]`` (int64 ``y_low, y_high, x_low, x_high``) for ``n`` lambdas and ``[n, 4]`` uniforms.

    Without ``minmax``: a ``sqrt(1 - lam)``-scaled box centred at a uniform random pixel,
    clipped at the border (so it may cover less than ``1 - lam``: see :func:`box_lam`),
    as in the CutMix paper and timm's ``rand_bbox``. With ``minmax``: height and width
    uniform in ``[min, max)`` of the image size, placed fully inside the image (timm's
    ``rand_bbox_minmax``).
    """
    size = np.array([height, width])
    if minmax is None:
        cut = (size * np.sqrt(1.0 - lam)[:, None]).astype(np.int64)  # [n, 2]: box height, width
        center = (uniform[:, :2] * size).astype(np.int64)
        low = np.maximum(center - cut // 2, 0)
        high = np.minimum(center + (cut + 1) // 2, size)
    else:
        shortest, longest = (size * minmax[0]).astype(np.int64), (size * minmax[1]).astype(np.int64)
        cut = shortest + (uniform[:, :2] * (longest - shortest)).astype(np.int64)
        low = (uniform[:, 2:] * (size - cut + 1)).astype(np.int64)
        high = low + cut
    return np.concatenate([low, high], axis=1)[:, [0, 2, 1, 3]]


def box_lam(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each image left outside its box: the exact CutMix label weight."""
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    return 1.0 - area / (height * width)


def pair_partners(batch_size: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random disjoint pairs: ``(partner, first, second)`` where ``first[k] <-> second[k]``.

    With an odd batch the one sample left over is its own partner (it stays unmixed).
    """
    order = rng.permutation(batch_size)
    half = batch_size // 2
    first, second = order[:half], order[half:2 * half]
    partner = np.arange(batch_size)
    partner[first], partner[second] = second, first
    return partner, first, second


def draw_plan(spec: MixSpec, rng: np.random.Generator, batch_size: int, height: int, width: int) -> "MixPlan":
    """Every random choice for one batch. The same rule for every mode: one draw per sample
    (``elem``), per pair (``pair``, the pair's second member copies the first's), or one for
    the whole batch (``batch``: a plan of one entry, broadcast to every sample).
    """
    if spec.mode == "batch":  # the rule in Python scalars: saves ~30 us a step of NumPy's per-op cost on 1-entry arrays
        lam, cutmix, box = draw_one(spec, rng, height, width)
        return MixPlan(torch.from_numpy(rng.permutation(batch_size)), torch.from_numpy(np.array([lam])),
                       torch.from_numpy(np.array([cutmix])), torch.from_numpy(np.array([box], dtype=np.int64)), shared=True)
    lam, cutmix, boxes = draw_many(spec, rng, batch_size, height, width)
    if spec.mode == "pair":  # the second member of each pair copies the first one's lambda, kind and box
        partner, first, second = pair_partners(batch_size, rng)
        lam[second], cutmix[second], boxes[second] = lam[first], cutmix[first], boxes[first]
    else:
        partner = rng.permutation(batch_size)
    return MixPlan(torch.from_numpy(partner), torch.from_numpy(lam), torch.from_numpy(cutmix), torch.from_numpy(boxes))


def draw_many(spec: MixSpec, rng: np.random.Generator, n: int, height: int, width: int):
    """``n`` draws of the rule: ``(lam [n], cutmix [n], boxes [n, 4])``, vectorized in NumPy (an op
    costs ~1 us there instead of the ~5 us of a torch op on a small tensor)."""
    mix_u, switch_u = rng.random((2, n))
    both = spec.mixup_alpha > 0 and spec.cutmix_alpha > 0
    cutmix = switch_u < spec.switch_prob if both else np.full(n, spec.cutmix_alpha > 0)
    # One Beta draw per kind that is on (a scalar alpha: ~10x faster than an array of alphas).
    lam = rng.beta(spec.mixup_alpha, spec.mixup_alpha, n) if spec.mixup_alpha > 0 else np.ones(n)
    if spec.cutmix_alpha > 0:
        cut_lam = rng.beta(spec.cutmix_alpha, spec.cutmix_alpha, n)
        lam = np.where(cutmix, cut_lam, lam) if both else cut_lam
    if spec.symmetric:
        lam = np.maximum(lam, 1.0 - lam)
    mixed = (mix_u < spec.prob) & (lam < 1.0)
    cutmix, lam = cutmix & mixed, np.where(mixed, lam, 1.0)
    boxes = np.zeros((n, 4), dtype=np.int64)
    if cutmix.any():
        boxes = cutmix_boxes(lam, height, width, rng.random((n, 4)), spec.minmax)
        if spec.minmax is not None or spec.correct_lam:
            lam = np.where(cutmix, box_lam(boxes, height, width), lam)
        boxes *= cutmix[:, None]
    return lam, cutmix, boxes


def draw_one(spec: MixSpec, rng: np.random.Generator, height: int, width: int):
    """One draw of the rule of :func:`draw_many`, in Python scalars, from the same random numbers
    in the same order (a test holds the two equal): ``(lam, cutmix, (y_low, y_high, x_low, x_high))``."""
    mix_u, switch_u = rng.random(2).tolist()
    both = spec.mixup_alpha > 0 and spec.cutmix_alpha > 0
    cutmix = switch_u < spec.switch_prob if both else spec.cutmix_alpha > 0
    lam = float(rng.beta(spec.mixup_alpha, spec.mixup_alpha)) if spec.mixup_alpha > 0 else 1.0
    if spec.cutmix_alpha > 0:
        cut_lam = float(rng.beta(spec.cutmix_alpha, spec.cutmix_alpha))
        lam = cut_lam if cutmix or not both else lam
    if spec.symmetric:
        lam = max(lam, 1.0 - lam)
    if not (mix_u < spec.prob and lam < 1.0):
        return 1.0, False, (0, 0, 0, 0)
    if not cutmix:
        return lam, False, (0, 0, 0, 0)
    u = rng.random(4).tolist()
    if spec.minmax is None:
        cut_h, cut_w = int(math.sqrt(1.0 - lam) * height), int(math.sqrt(1.0 - lam) * width)
        cy, cx = int(u[0] * height), int(u[1] * width)
        box = (max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height),
               max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width))
    else:
        short_h, long_h = int(height * spec.minmax[0]), int(height * spec.minmax[1])
        short_w, long_w = int(width * spec.minmax[0]), int(width * spec.minmax[1])
        cut_h, cut_w = short_h + int(u[0] * (long_h - short_h)), short_w + int(u[1] * (long_w - short_w))
        y_low, x_low = int(u[2] * (height - cut_h + 1)), int(u[3] * (width - cut_w + 1))
        box = (y_low, y_low + cut_h, x_low, x_low + cut_w)
    if spec.minmax is not None or spec.correct_lam:
        lam = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
    return lam, True, box


# --------------------------------------------------------------------------- applying


@dataclass
class MixPlan:
    """Every random choice for one batch; applying it is deterministic.

    ``partner[i]``: the sample whose pixels and label are mixed into sample ``i``.
    ``lam[i]``: weight of sample ``i``'s own label (1 = unmixed); for CutMix samples it
    is already the box-corrected value when ``correct_lam`` is on.
    ``cutmix[i]``: sample ``i`` takes a box (CutMix) rather than a blend (Mixup).
    ``boxes[i]``: ``(y_low, y_high, x_low, x_high)`` of that box.
    ``shared``: one draw for the whole batch (``mode=batch``): ``lam``, ``cutmix`` and ``boxes``
    hold one entry, broadcast to every sample.
    A plan lives on the host (CPU tensors); applying it moves what the device needs.
    """

    partner: torch.Tensor
    lam: torch.Tensor
    cutmix: torch.Tensor
    boxes: torch.Tensor
    shared: bool = False

    @property
    def is_identity(self) -> bool:
        return self.lam.numpy()[0] == 1.0 if self.shared else bool((self.lam == 1).all())


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
    full-size copy; never use it on a tensor autograd still needs.
    """
    if plan.is_identity:
        return images
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
    """``lam * targets + (1 - lam) * targets[partner]``: still a distribution per row."""
    if plan.is_identity:
        return targets
    other = targets.index_select(0, plan.partner.to(targets.device))
    if plan.shared:
        return other.lerp_(targets, float(plan.lam.numpy()[0]))
    return other.lerp_(targets, plan.lam.to(device=targets.device, dtype=targets.dtype).view(-1, 1))
