"""Mixup, CutMix and their per-pair / per-sample variants, vectorized, on the training device.

Two layers, as in composer's mixup: pure functions that take every random choice as an
argument (a :class:`MixPlan`: partners, lambdas, which samples use CutMix, their boxes),
and a small stateful :class:`Mixer` that draws plans from its own ``torch.Generator``.
Tests inject plans; training draws them.

Conventions (timm's): targets are one-hot vectors, label-smoothed *before* mixing;
``lam`` is the weight of a sample's own image and label, ``1 - lam`` its partner's.
For CutMix the partner's pixels fill a box and, with ``correct_lam`` (default), ``lam``
is the exact fraction of the sample's own pixels left after the box is clipped at the
image border (Yun et al. 2019 compute lambda from the area they paste, Sec. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from mixtrain.config import AugmentConfig, CutmixConfig, MixConfig, SwitchConfig


# --------------------------------------------------------------------------- pure functions


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float targets ``[B, C]``; with smoothing, ``1 - s + s/C`` on the label and ``s/C`` elsewhere (timm)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def sample_beta(alpha: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """One Beta(a, a) draw per entry of ``alpha``, from ``generator``; 1.0 where ``a == 0`` (no mixing)."""
    off = alpha <= 0
    concentration = torch.from_numpy(np.where(off, 1.0, alpha)).unsqueeze(1).expand(-1, 2)
    return np.where(off, 1.0, torch._sample_dirichlet(concentration, generator=generator)[:, 0].numpy())


def cutmix_box(lam: float, height: int, width: int, uniform: Sequence[float],
               minmax: Optional[Tuple[float, float]] = None) -> Tuple[int, int, int, int]:
    """One CutMix box ``(y_low, y_high, x_low, x_high)`` from four uniforms in [0, 1).

    Without ``minmax``: a ``sqrt(1 - lam)``-scaled box centred at a uniform random pixel,
    clipped at the border (so it may cover less than ``1 - lam``: see :func:`box_lam`),
    as in the CutMix paper and timm's ``rand_bbox``. With ``minmax``: height and width
    uniform in ``[min, max)`` of the image size, placed fully inside the image (timm's
    ``rand_bbox_minmax``). :func:`cutmix_boxes` is the same rule for many boxes at once.
    """
    if minmax is None:
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(uniform[0] * height), int(uniform[1] * width)
        return (max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height),
                max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width))
    short_h, long_h = int(height * minmax[0]), int(height * minmax[1])
    short_w, long_w = int(width * minmax[0]), int(width * minmax[1])
    cut_h = short_h + int(uniform[0] * (long_h - short_h))
    cut_w = short_w + int(uniform[1] * (long_w - short_w))
    y_low, x_low = int(uniform[2] * (height - cut_h + 1)), int(uniform[3] * (width - cut_w + 1))
    return y_low, y_low + cut_h, x_low, x_low + cut_w


def cutmix_boxes(lam: np.ndarray, height: int, width: int, uniform: np.ndarray,
                 minmax: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """:func:`cutmix_box` for ``n`` lambdas and ``[n, 4]`` uniforms: ``[n, 4]`` int64 boxes."""
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
    return np.stack([low[:, 0], high[:, 0], low[:, 1], high[:, 1]], axis=1)


def box_lam(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each image left outside its box: the exact CutMix label weight."""
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    return 1.0 - area / (height * width)


def partner_weights(plan: "MixPlan", height: int, width: int, device: torch.device,
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


@dataclass
class BatchMixPlan:
    """One lambda, kind and box for the whole batch (``mode=batch``): the cheap common case.

    ``partner[i]``: the sample mixed into sample ``i``. ``lam``: weight of each sample's own
    label (1 = unmixed). ``box``: ``(y_low, y_high, x_low, x_high)`` for CutMix, None for a
    blend; with ``correct_lam`` on, ``lam`` already equals the area outside it.
    """

    partner: Optional[torch.Tensor]
    lam: float
    box: Optional[Tuple[int, int, int, int]] = None

    @property
    def is_identity(self) -> bool:
        return self.lam == 1.0

    def per_sample(self, batch_size: int) -> "MixPlan":
        """The same mix written as a per-sample plan."""
        partner = torch.arange(batch_size) if self.partner is None else self.partner
        box = torch.tensor(self.box or (0, 0, 0, 0)).expand(batch_size, 4)
        return MixPlan(partner, torch.full((batch_size,), self.lam, dtype=torch.float64),
                       torch.full((batch_size,), self.box is not None), box)


@dataclass
class MixPlan:
    """Every random choice for a batch mixed per sample or per pair; applying it is deterministic.

    ``partner[i]``: the sample whose pixels and label are mixed into sample ``i``.
    ``lam[i]``: weight of sample ``i``'s own label (1 = unmixed); for CutMix samples it
    is already the box-corrected value when ``correct_lam`` is on.
    ``cutmix[i]``: sample ``i`` takes a box (CutMix) rather than a blend (Mixup).
    ``boxes[i]``: ``(y_low, y_high, x_low, x_high)`` of that box.
    """

    partner: torch.Tensor
    lam: torch.Tensor
    cutmix: torch.Tensor
    boxes: torch.Tensor

    @property
    def is_identity(self) -> bool:
        return bool((self.lam == 1).all())


Plan = Union[BatchMixPlan, MixPlan]


def mix_images(images: torch.Tensor, plan: Plan, inplace: bool = False) -> torch.Tensor:
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
    other = images.index_select(0, plan.partner.to(device))  # whole partners: faster than a strided box
    if isinstance(plan, BatchMixPlan):
        if plan.box is not None:
            y_low, y_high, x_low, x_high = plan.box
            out[:, :, y_low:y_high, x_low:x_high] = other[:, :, y_low:y_high, x_low:x_high]
            return out
        return out.lerp_(other, 1.0 - plan.lam)
    if plan.cutmix.any():
        weight = partner_weights(plan, *images.shape[-2:], device, images.dtype)
    else:
        weight = (1.0 - plan.lam).to(device=device, dtype=images.dtype).view(-1, 1, 1, 1)
    return out.lerp_(other, weight)


def mix_targets(targets: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``lam * targets + (1 - lam) * targets[partner]``: still a distribution per row."""
    if plan.is_identity:
        return targets
    other = targets.index_select(0, plan.partner.to(targets.device))
    if isinstance(plan, BatchMixPlan):
        return other.lerp_(targets, plan.lam)
    return other.lerp_(targets, plan.lam.to(device=targets.device, dtype=targets.dtype).view(-1, 1))


# --------------------------------------------------------------------------- plans


def pair_partners(batch_size: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random disjoint pairs: ``(partner, first, second)`` where ``first[k] <-> second[k]``.

    With an odd batch the one sample left over is its own partner (it stays unmixed).
    """
    order = torch.randperm(batch_size, generator=generator)
    half = batch_size // 2
    first, second = order[:half], order[half:2 * half]
    partner = torch.arange(batch_size)
    partner[first], partner[second] = second, first
    return partner, first, second


class Mixer:
    """Draws a plan per batch from its own generator and applies it.

    Lives in the main process and runs on the training device, after the batch is
    formed, so ``disable_epochs`` always takes effect (there is no worker copy of it).
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, epochs: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.epochs = epochs
        # One stream per (run seed, rank): ranks mix their own local batches independently.
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * rank + 17)
        self._concentration: Dict[float, torch.Tensor] = {}

    def active(self, epoch: int) -> bool:
        """Mixing is on except for the last ``disable_epochs`` epochs (and never for ``none``)."""
        return isinstance(self.cfg, MixConfig) and epoch < self.epochs - self.cfg.disable_epochs

    # ---- drawing

    # Plans are a few hundred numbers: the arithmetic on them runs in NumPy, where an op
    # costs ~1 us instead of the ~5 us of a torch op (all randomness is still drawn from
    # self.generator).

    def _kinds_and_lams(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """Per draw: use CutMix?, and lambda (before any box correction)."""
        cfg, g = self.cfg, self.generator
        uniform = torch.rand(n, 2, generator=g, dtype=torch.float64).numpy()  # [mixed at all?, CutMix?]
        if isinstance(cfg, SwitchConfig):
            if cfg.cutmix_alpha <= 0 or cfg.mixup_alpha <= 0:  # one of them is off: no switching
                cutmix = np.full(n, cfg.mixup_alpha <= 0 < cfg.cutmix_alpha)
            else:
                cutmix = uniform[:, 1] < cfg.switch_prob
            alpha = np.where(cutmix, cfg.cutmix_alpha, cfg.mixup_alpha)
        else:
            cutmix = np.full(n, isinstance(cfg, CutmixConfig))
            alpha = np.full(n, float(cfg.alpha))
        lam = sample_beta(alpha, g)
        if cfg.symmetric_lam:
            lam = np.maximum(lam, 1.0 - lam)
        mixed = (uniform[:, 0] < cfg.prob) & (lam < 1.0)
        return cutmix & mixed, np.where(mixed, lam, 1.0)

    def _boxes(self, cutmix: np.ndarray, lam: np.ndarray, height: int, width: int):
        """Boxes for every draw, and lambdas corrected to the box area where asked."""
        if not cutmix.any():
            return np.zeros((len(lam), 4), dtype=np.int64), lam
        cfg = self.cfg
        minmax = tuple(cfg.minmax) if cfg.minmax else None
        uniform = torch.rand(len(lam), 4, generator=self.generator, dtype=torch.float64).numpy()
        boxes = cutmix_boxes(lam, height, width, uniform, minmax)
        if minmax is not None or cfg.correct_lam:
            lam = np.where(cutmix, box_lam(boxes, height, width), lam)
        return boxes, lam

    def _draw_per_batch(self, batch_size: int, height: int, width: int) -> BatchMixPlan:
        """The per-sample rules for one shared draw, in Python scalars: this runs every step
        and tensor ops on one-element tensors would cost more than the mixing."""
        cfg, g = self.cfg, self.generator
        u_mix, u_switch, *u_box = torch.rand(6, generator=g, dtype=torch.float64).tolist()
        if isinstance(cfg, SwitchConfig):
            if cfg.cutmix_alpha <= 0 or cfg.mixup_alpha <= 0:
                use_cutmix = cfg.mixup_alpha <= 0 < cfg.cutmix_alpha
            else:
                use_cutmix = u_switch < cfg.switch_prob
            alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        else:
            use_cutmix, alpha = isinstance(cfg, CutmixConfig), cfg.alpha
        lam = self._beta(alpha)
        if cfg.symmetric_lam:
            lam = max(lam, 1.0 - lam)
        if u_mix >= cfg.prob or lam >= 1.0:
            return BatchMixPlan(None, 1.0)
        box = None
        if use_cutmix:
            minmax = tuple(cfg.minmax) if cfg.minmax else None
            box = cutmix_box(lam, height, width, u_box, minmax)
            if minmax is not None or cfg.correct_lam:
                lam = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
        return BatchMixPlan(torch.randperm(batch_size, generator=g), lam, box)

    def _beta(self, alpha: float) -> float:
        """One Beta(alpha, alpha) draw (1.0 for alpha 0), reusing the concentration tensor."""
        if alpha <= 0:
            return 1.0
        if alpha not in self._concentration:
            self._concentration[alpha] = torch.full((1, 2), float(alpha), dtype=torch.float64)
        return float(torch._sample_dirichlet(self._concentration[alpha], generator=self.generator)[0, 0])

    def draw_plan(self, batch_size: int, height: int, width: int) -> Plan:
        if self.cfg.mode == "batch":
            return self._draw_per_batch(batch_size, height, width)
        cutmix, lam = self._kinds_and_lams(batch_size)
        boxes, lam = self._boxes(cutmix, lam, height, width)
        if self.cfg.mode == "elem":
            partner = torch.randperm(batch_size, generator=self.generator)
        else:  # pair: the second member of each pair copies the first one's lambda, kind and box.
            # An odd batch leaves one sample paired with itself, which mixing leaves unchanged.
            partner, first, second = pair_partners(batch_size, self.generator)
            first, second = first.numpy(), second.numpy()
            lam[second], cutmix[second], boxes[second] = lam[first], cutmix[first], boxes[first]
        return MixPlan(partner, torch.from_numpy(lam), torch.from_numpy(cutmix), torch.from_numpy(boxes))

    # ---- applying

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return one_hot(labels, self.num_classes, self.cfg.label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Input-space mixing: ``(mixed images, soft targets)``; ``images`` is mixed in place.

        The first ``len(labels)`` rows are the batch's own samples (RegMixup appends more)."""
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        plan = self.draw_plan(images.shape[0], *images.shape[-2:])
        return mix_images(images, plan, inplace=True), mix_targets(targets, plan)

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)`` for one training batch, mixing wherever this augment mixes."""
        images, targets = self(images, labels, epoch)
        return model(images), targets


class ManifoldMixer(Mixer):
    """Manifold Mixup (Verma et al. 2019): mix the hidden state after a random stage.

    Layer 0 is the input; layer ``k >= 1`` is the output of ``model.stages[k - 1]``.
    The mix is done by a forward hook on that stage, so the model is still called as a
    whole (DDP and torch.compile wrappers keep working).
    """

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(labels)
        if not self.active(epoch):
            return model(images), targets
        layers = list(self.cfg.layers)
        layer = layers[int(torch.randint(len(layers), (1,), generator=self.generator))]
        plan = self.draw_plan(images.shape[0], 1, 1)  # Mixup only: boxes are unused
        if layer == 0:
            return model(mix_images(images, plan)), mix_targets(targets, plan)
        stage = stages_of(model)[layer - 1]
        handle = stage.register_forward_hook(lambda module, inputs, output: mix_images(output, plan))
        try:
            return model(images), mix_targets(targets, plan)
        finally:
            handle.remove()


class RegMixupMixer(Mixer):
    """RegMixup (Pinto et al. 2022): the clean batch and its Mixup go through the model as one
    batch of ``2B`` rows, clean first.

    Its loss ``CE(clean) + eta * CE(mixed)`` is then the plain soft-target cross-entropy (a
    mean over the 2B rows) with the clean targets scaled by 2 and the mixed ones by
    ``2 * eta``: the cross-entropy is linear in its targets, so no loss needs to know
    where the halves split. Scaling leaves each row's argmax alone, and training accuracy
    is counted on the first ``B`` rows, the clean ones.
    """

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self.active(epoch):
            return images, self.targets(labels)
        mixed, mixed_targets = super().__call__(images.clone(), labels, epoch)
        return torch.cat([images, mixed]), torch.cat([2.0 * self.targets(labels), 2.0 * self.cfg.eta * mixed_targets])


def target_entropy(targets: torch.Tensor) -> float:
    """Mean entropy (nats) of soft targets, each row normalized to a distribution first."""
    p = targets.double() / targets.double().sum(1, keepdim=True)
    return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())


def stages_of(model: nn.Module) -> nn.ModuleList:
    """The ``stages`` of a bundled ResNet, through DDP / torch.compile wrappers."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return inner.stages


# augment name -> mixer class (input-space mixing unless the augment mixes elsewhere).
MIXERS: Dict[str, type] = {"none": Mixer, "mixup": Mixer, "cutmix": Mixer, "switch": Mixer, "manifold": ManifoldMixer,
                           "regmixup": RegMixupMixer}


def create_mixer(cfg: AugmentConfig, num_classes: int, epochs: int, seed: int = 0, rank: int = 0) -> Mixer:
    return MIXERS[cfg.name](cfg, num_classes, epochs, seed, rank)
