"""Mixing: one rule that draws a plan for any method and mode (``plans``), one module per method
(each defines its schema and mixer and registers itself: ``mixup`` for Mixup, CutMix, their switch
and ``none``; ``manifold``; ``regmixup``), the soft-target losses (``losses``) and ``mixtrain
preview`` (``preview``). :mod:`mixtrain.mixing.method` is the registry entry of a method."""

# Importing a method's module registers it: mixup (none, mixup, cutmix, switch), manifold, regmixup,
# fmix, resizemix, saliencymix, smoothmix.
from mixtrain.mixing.fmix import FMixConfig, FMixMixer
from mixtrain.mixing.manifold import ManifoldConfig, ManifoldMixer, stage_modules
from mixtrain.mixing.method import MixingMethod, create_mixer, describe_augment, method_of, register_method
from mixtrain.mixing.mixup import CutmixConfig, Mixer, MixupConfig, SwitchConfig
from mixtrain.mixing.plans import (MixPlan, MixSpec, box_lam, cutmix_boxes, draw_plan, mix_images, mix_spec,
                                   mix_targets, one_hot, pair_partners, partner_weights)
from mixtrain.mixing.regmixup import RegMixupConfig, RegMixupMixer
from mixtrain.mixing.resizemix import ResizeMixConfig, ResizeMixMixer
from mixtrain.mixing.saliencymix import SaliencyMixConfig, SaliencyMixMixer
from mixtrain.mixing.smoothmix import SmoothMixConfig, SmoothMixMixer

__all__ = ["CutmixConfig", "FMixConfig", "FMixMixer", "ResizeMixConfig", "ResizeMixMixer", "SaliencyMixConfig",
           "SaliencyMixMixer", "SmoothMixConfig", "SmoothMixMixer", "ManifoldConfig", "ManifoldMixer", "MixPlan", "MixSpec", "Mixer", "MixingMethod",
           "MixupConfig", "RegMixupConfig", "RegMixupMixer", "SwitchConfig", "box_lam", "create_mixer",
           "cutmix_boxes", "describe_augment", "draw_plan", "method_of", "mix_images", "mix_spec", "mix_targets",
           "one_hot", "pair_partners", "partner_weights", "register_method", "stage_modules"]
