"""What a mixing method is: one registry entry (its config dataclass, its mixer, whether ``mixtrain
preview`` can draw it, the loss it needs, its label in reports) and the :class:`Mixer` its mixer
builds on, with the helpers that read a plan.

A method is one module under ``mixtrain/mixing/`` (the package imports every one) or a user's own
(imported by its config's ``_target_``): it defines its config and mixer and calls
:func:`register_method`. Its YAML option (``conf/augment/<name>.yaml``, or one in a user's config
dir) starts from ``/schema/augment/<name>``. Nothing else names it.

A config's ``spec()`` (:func:`spec_of`) tells the plan rule what to draw: a Beta(alpha, alpha)
lambda (Mixup, CutMix), a U(0, 1) the method maps itself (``lam_draw="uniform"``), or nothing but
the partners, ``k`` of them per sample, when the mixer draws each source's weight in
:meth:`Mixer.draw_weights` (``lam_draw="method"``: Mosaic's areas, k-mixup's Dirichlet weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mixtrain.config.augment import AugmentConfig, MixConfig
from mixtrain.config.errors import require
from mixtrain.config.registry import Entry, entry_of, register
from mixtrain.errors import MixtrainError
from mixtrain.mixing.apply import mix_images, mix_targets, one_hot
from mixtrain.mixing.plans import MixPlan, MixSpec, draw_plan, mix_spec

# --------------------------------------------------------------------------- the registry entry


@dataclass(frozen=True)
class MixingMethod(Entry):
    mixer: Optional[type] = None  # a Mixer subclass: (cfg, num_classes, epochs, seed, rank) -> mixer
    previewable: bool = True  # False: it mixes something that has no picture (hidden features)
    loss: Optional[str] = None  # the augment.loss it needs; None: either
    label: Optional[Callable[[Any], str]] = None  # its short name in reports: "mixup a=0.2"
    checks: Optional[Callable[[Any, Any], None]] = None  # (its config, the run config): what needs the whole run

    def check_run(self, config: Any, run: Any) -> None:
        if self.loss is not None:
            require(config.loss == self.loss, "augment.loss", f"must be {self.loss} with augment={self.name}",
                    config.loss)
        if self.checks is not None:
            self.checks(config, run)

    def describe(self, config: Any) -> str:
        return self.label(config) if self.label else labelled_by_alpha(config)


def labelled_by_alpha(config: Any) -> str:
    """``name a=ALPHA`` for a method with an ``alpha``, else its name."""
    alpha = getattr(config, "alpha", None)
    return f"{config.name} a={alpha:g}" if isinstance(alpha, (int, float)) else config.name


def register_method(name: str, schema: type, mixer: type, previewable: bool = True, loss: Optional[str] = None,
                    label: Optional[Callable[[Any], str]] = None,
                    checks: Optional[Callable[[Any, Any], None]] = None) -> MixingMethod:
    """Register a mixing method: ``augment=<name>`` then trains, previews and reports it."""
    return register(MixingMethod("augment", name, schema, mixer=mixer, previewable=previewable, loss=loss,
                                 label=label, checks=checks))


def method_of(config: Any) -> MixingMethod:
    """The registered method of an augment config."""
    method = entry_of("augment", config)
    if method is None:
        raise MixtrainError(f"augment {getattr(config, 'name', config)!r} is not a registered mixing method: its "
                            "module must call mixtrain.mixing.register_method (see mixtrain/mixing/method.py)")
    return method


def create_mixer(config: Any, num_classes: int, epochs: int, seed: int = 0, rank: int = 0):
    return method_of(config).mixer(config, num_classes, epochs, seed, rank)


def describe_augment(config: Any) -> str:
    """The augment's label with what else changes its targets: ``mixup a=0.2 elem ls=0.1``."""
    text = method_of(config).describe(config)
    if config.name != "none" and getattr(config, "mode", "batch") != "batch":
        text += f" {config.mode}"
    if config.label_smoothing:
        text += f" ls={config.label_smoothing:g}"
    if config.loss == "bce":
        text += " BCE"
    return text


def spec_of(cfg: MixConfig, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, switch_prob: float = 0.0,
            lam_draw: str = "beta", partners: int = 1) -> MixSpec:
    """A mixing config's :class:`MixSpec`: its alphas (or ``lam_draw``, see the module), its ``k``
    partners per sample, and the keys every method shares (``mode``, ``prob``, ``symmetric_lam``)."""
    minmax = getattr(cfg, "minmax", None)  # CutMix's keys, on the configs that can cut
    return MixSpec(float(mixup_alpha), float(cutmix_alpha), float(switch_prob), float(cfg.prob), cfg.mode,
                   tuple(minmax) if minmax else None, getattr(cfg, "correct_lam", True), cfg.symmetric_lam,
                   lam_draw, partners)


# --------------------------------------------------------------------------- the mixer


class Mixer:
    """Draws a plan per batch from its own generator and applies it.

    Lives in the main process and runs on the training device, after the batch is
    formed, so ``disable_epochs`` always takes effect (there is no worker copy of it).
    A plain object, not an ``nn.Module``: it owns the run's mixing randomness (a NumPy
    generator seeded by run seed and rank, saved in checkpoints). :meth:`mixed_forward` is
    where a mixer meets the model (Manifold Mixup mixes inside it instead).
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, epochs: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg = cfg
        self.spec = mix_spec(cfg)
        self.num_classes = num_classes
        self.epochs = epochs
        # One stream per (run seed, rank): ranks mix their own local batches independently.
        self.rng = np.random.default_rng([seed, rank, 17])

    def active(self, epoch: int) -> bool:
        """Mixing is on except for the last ``disable_epochs`` epochs (and never for ``none``)."""
        return isinstance(self.cfg, MixConfig) and epoch < self.epochs - self.cfg.disable_epochs

    def state_dict(self) -> Dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise MixtrainError("the checkpoint's mixing state was written by an older mixtrain (a torch "
                                "generator): finish that run with the mixtrain that started it")
        self.rng.bit_generator.state = state

    def draw_plan(self, batch_size: int, height: int, width: int) -> MixPlan:
        return draw_plan(self.spec, self.rng, batch_size, height, width, self.draw_weights)

    def draw_weights(self, n: int, height: int, width: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """A method with ``lam_draw="method"`` draws here, from ``self.rng``, for ``n`` plan entries:
        ``(weights [k + 1, n], boxes)``, each source's share (the sample's own first, each column
        summing to 1), and for a method that pastes regions the partners' ``[k, n, 4]`` boxes
        ``(y_low, y_high, x_low, x_high)``, disjoint, with ``weights`` their exact areas
        (:func:`region_weights`); ``None`` for a blend. The rule then shares a group's draw (pair mode)
        and leaves the entries that do not mix whole; ``symmetric_lam`` is the method's to honour."""
        raise NotImplementedError(f"{type(self).__name__} draws its own weights (lam_draw='method'): define "
                                  "draw_weights(n, height, width)")

    def row_sums(self, rows: int, own: int) -> torch.Tensor:
        """What each of the ``rows`` target rows of a batch of ``own`` samples sums to: 1, each a
        distribution over the classes (``debug=anomaly`` checks it)."""
        return torch.ones(rows)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return one_hot(labels, self.num_classes, self.cfg.label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Input-space mixing: ``(mixed images, soft targets)``; ``images`` may be mixed in place.

        The first ``len(labels)`` rows are the batch's own samples (RegMixup appends more)."""
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        plan = self.draw_plan(images.shape[0], *images.shape[-2:])
        return mix_images(images, plan, inplace=True), mix_targets(targets, plan)

    def mixed_forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)`` for one training batch, mixing wherever this augment mixes."""
        images, targets = self(images, labels, epoch)
        return model(images), targets


# --------------------------------------------------------------------------- reading a plan


def entries(plan: MixPlan) -> int:
    """How many draws a plan holds: one for a shared (batch-mode) plan, else one per sample."""
    return 1 if plan.shared else plan.partner.shape[-1]


def pair_sources(plan: MixPlan, mode: str) -> np.ndarray:
    """For each sample, the sample whose random choices it uses: in pair mode the second member of
    a pair (the larger index) copies the first's, so a pair shares one mask; otherwise itself."""
    partner = plan.partner.numpy()
    own = np.arange(len(partner))
    return np.where(partner < own, partner, own) if mode == "pair" else own


def mixing(plan: MixPlan) -> np.ndarray:
    """``[n]`` bool: the plan entries that mix (their lambda is below 1)."""
    return plan.lam.numpy() < 1.0


def region_weights(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[k + 1, n]`` exact shares of disjoint regions: each partner's box area, and the rest the sample's."""
    areas = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2]) / (height * width)
    return np.concatenate([1.0 - areas.sum(0, keepdims=True), areas])


def torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from the mixer's NumPy stream: draws made with it on the
    device are as resumable as the stream (its state is in every checkpoint)."""
    return torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
