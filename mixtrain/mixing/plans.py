"""Mix plans: every random choice for one batch, drawn by one rule for every mode.

Two layers, as in composer's mixup: :func:`draw_plan` makes every random choice (a
:class:`MixPlan`: partners, lambdas, which samples use CutMix, their boxes) from a
normalized :class:`MixSpec` and a NumPy generator, and pure functions apply a plan
(:mod:`mixtrain.mixing.apply`). Tests inject plans; training draws them.

``lam`` is the weight of a sample's own image and label, ``1 - lam`` its partner's. For
CutMix the partner's pixels fill a box and, with ``correct_lam`` (default), ``lam`` is the
exact fraction of the sample's own pixels left after the box is clipped at the image
border (Yun et al. 2019 compute lambda from the area they paste, Sec. 3.1). A plan may
carry ``k`` partners per sample (Mosaic's three, k-mixup's ``k - 1``): then the method
draws each source's weight (its mixer's ``draw_weights``), the rule the partners and which
samples mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from mixtrain.config.augment import AugmentConfig


@dataclass(frozen=True)
class MixSpec:
    """Every augment config in one form: what :func:`draw_plan` needs, nothing else.

    A sample (or pair, or batch) is mixed with probability ``prob``; it uses CutMix with
    probability ``switch_prob`` when both alphas are on, else the one that is on; its
    lambda is Beta(alpha, alpha) of that kind (timm's ``Mixup`` arguments).

    ``lam_draw`` says where the weights come from: ``beta`` as above; ``uniform``: lam ~ U(0, 1),
    for a method that maps it itself (ResizeMix's patch side); ``method``: the rule draws none,
    the mixer's ``draw_weights`` draws the weight of each of the ``partners + 1`` sources.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    prob: float = 1.0
    mode: str = "batch"
    minmax: Optional[Tuple[float, float]] = None
    correct_lam: bool = True
    symmetric: bool = False
    lam_draw: str = "beta"  # beta | uniform | method
    partners: int = 1  # k partners per sample (lam_draw=method); one otherwise

    def __post_init__(self) -> None:
        if self.partners != 1 and self.lam_draw != "method":
            raise ValueError(f"{self.partners} partners per sample need lam_draw='method' (got {self.lam_draw!r})")


def mix_spec(cfg: AugmentConfig) -> MixSpec:
    """The :class:`MixSpec` of an augment config: its ``spec()``, or one that never mixes (``none``)."""
    spec = getattr(cfg, "spec", None)
    return spec() if spec is not None else MixSpec(prob=0.0)


# --------------------------------------------------------------------------- drawing


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


def group_partners(batch_size: int, partners: int, rng: np.random.Generator):
    """Random disjoint groups of ``k + 1`` samples that mix among themselves: ``(partner [k, B], leader [B],
    grouped [B])``. Member ``m``'s ``j``-th partner is member ``m + j`` (mod ``k + 1``), so every member
    takes each slot once; ``leader`` is the member whose draw the group shares; the samples left over
    (fewer than ``k + 1``) are their own partners and stay unmixed. With ``k = 1``: :func:`pair_partners`."""
    order, size = rng.permutation(batch_size), partners + 1
    members = order[:batch_size // size * size].reshape(size, -1)  # members[m, g]: member m of group g
    partner = np.tile(np.arange(batch_size), (partners, 1))
    for j in range(1, size):
        partner[j - 1, members] = np.roll(members, -j, axis=0)
    leader, grouped = np.arange(batch_size), np.zeros(batch_size, dtype=bool)
    leader[members], grouped[members] = members[0], True
    return partner, leader, grouped


def draw_source_plan(spec: MixSpec, rng: np.random.Generator, batch_size: int, height: int, width: int,
                     draw_weights: Callable[[int, int, int], Tuple[np.ndarray, Optional[np.ndarray]]]) -> "MixPlan":
    """The rule for a method that draws its own weights (``lam_draw=method``): ``k`` partners per sample
    (a permutation per slot, so a partner may repeat or be the sample itself, as Mixup's one partner
    may; in ``pair`` mode groups of ``k + 1``, all distinct), which entries mix (``prob``), then
    ``draw_weights(n, H, W)``: each entry's ``[k + 1, n]`` source weights (own first) and, for a method
    that pastes regions, the partners' ``[k, n, 4]`` boxes (disjoint; the sample keeps the rest)."""
    k, n = spec.partners, 1 if spec.mode == "batch" else batch_size
    if spec.mode == "pair":
        partner, leader, grouped = group_partners(batch_size, k, rng)
    else:
        partner = rng.permuted(np.tile(np.arange(batch_size), (k, 1)), axis=1)
        leader, grouped = np.arange(n), np.ones(n, dtype=bool)
    mixes = rng.random(n) < spec.prob
    weights, boxes = draw_weights(n, height, width)
    regions = boxes is not None
    boxes = np.zeros((k, n, 4), dtype=np.int64) if boxes is None else boxes
    # A group shares its leader's draw; an entry that does not mix keeps all of itself.
    weights, boxes, mixes = weights[:, leader], boxes[:, leader], mixes[leader] & grouped
    weights = np.where(mixes, weights, np.eye(k + 1, 1))
    return MixPlan(torch.from_numpy(partner), torch.from_numpy(weights[0].copy()), torch.from_numpy(mixes & regions),
                   torch.from_numpy(boxes * (mixes & regions)[:, None]), shared=spec.mode == "batch",
                   weights=torch.from_numpy(weights))


def draw_plan(spec: MixSpec, rng: np.random.Generator, batch_size: int, height: int, width: int,
              draw_weights: Optional[Callable] = None) -> "MixPlan":
    """Every random choice for one batch. The same rule for every mode: one draw per sample
    (``elem``), per pair (``pair``, the pair's second member copies the first's), or one for
    the whole batch (``batch``: a plan of one entry, broadcast to every sample). A method that
    draws its own weights passes ``draw_weights`` (:func:`draw_source_plan`).
    """
    if spec.lam_draw == "method":
        return draw_source_plan(spec, rng, batch_size, height, width, draw_weights)
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
    alpha = blend_alpha(spec)
    lam = rng.beta(alpha, alpha, n) if alpha > 0 else np.ones(n)
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


def blend_alpha(spec: MixSpec) -> float:
    """The alpha of the blend draw: Mixup's, or 1 for ``lam_draw=uniform``: U(0, 1) is Beta(1, 1), and drawn
    as NumPy's Beta(1, 1) it keeps the random stream (and the results) of the runs made before the flag."""
    return 1.0 if spec.lam_draw == "uniform" else spec.mixup_alpha


def draw_one(spec: MixSpec, rng: np.random.Generator, height: int, width: int):
    """One draw of the rule of :func:`draw_many`, in Python scalars, from the same random numbers
    in the same order (a test holds the two equal): ``(lam, cutmix, (y_low, y_high, x_low, x_high))``."""
    mix_u, switch_u = rng.random(2).tolist()
    both = spec.mixup_alpha > 0 and spec.cutmix_alpha > 0
    cutmix = switch_u < spec.switch_prob if both else spec.cutmix_alpha > 0
    alpha = blend_alpha(spec)
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
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
    With ``k`` partners per sample, ``partner`` is ``[k, B]``, ``weights`` ``[k + 1, n]`` the share
    of each source (the sample's own first, so ``lam = weights[0]``), and ``cutmix[i]`` says that the
    partners fill regions, ``boxes[j, i]`` partner ``j``'s, rather than blend.
    A plan lives on the host (CPU tensors); applying it moves what the device needs.
    """

    partner: torch.Tensor
    lam: torch.Tensor
    cutmix: torch.Tensor
    boxes: torch.Tensor
    shared: bool = False
    weights: Optional[torch.Tensor] = None

    @property
    def is_identity(self) -> bool:
        return self.lam.numpy()[0] == 1.0 if self.shared else bool((self.lam == 1).all())
