"""Mixing: one rule that draws a plan for any augment and mode (``plans``), the strategies
that apply it (``mixup``: input space; ``manifold``: a hidden stage; ``regmixup``: clean plus
mixed), the soft-target losses (``losses``) and ``mixtrain preview`` (``preview``)."""

from typing import Dict

from mixtrain.config import AugmentConfig
from mixtrain.mixing.manifold import ManifoldMixer, stages_of
from mixtrain.mixing.mixup import Mixer, target_entropy
from mixtrain.mixing.plans import (MixPlan, MixSpec, box_lam, cutmix_boxes, draw_plan, mix_images, mix_spec,
                                   mix_targets, one_hot, pair_partners, partner_weights)
from mixtrain.mixing.regmixup import RegMixupMixer

# augment name -> mixer class (input-space mixing unless the augment mixes elsewhere).
MIXERS: Dict[str, type] = {"none": Mixer, "mixup": Mixer, "cutmix": Mixer, "switch": Mixer, "manifold": ManifoldMixer,
                           "regmixup": RegMixupMixer}


def create_mixer(cfg: AugmentConfig, num_classes: int, epochs: int, seed: int = 0, rank: int = 0) -> Mixer:
    return MIXERS[cfg.name](cfg, num_classes, epochs, seed, rank)


__all__ = ["MIXERS", "ManifoldMixer", "MixPlan", "MixSpec", "Mixer", "RegMixupMixer", "box_lam", "create_mixer",
           "cutmix_boxes", "draw_plan", "mix_images", "mix_spec", "mix_targets", "one_hot", "pair_partners",
           "partner_weights", "stages_of", "target_entropy"]
