"""Mixing: one rule draws a plan for any method and mode (``plans``: one partner per sample or
``k``) and pure functions apply it (``apply``); what a method is, its registry entry and the
:class:`Mixer` it builds on (``method``); one module per method, each registering itself; the
soft-target losses (``losses``) and ``mixtrain preview`` (``preview``).

The package imports every module in it, so a method's module registers itself by being here: a new
method is its module, its YAML and its test. A method's own names are found in its module
(``mixtrain.mixing.fmix.FMixConfig``) and, through :func:`__getattr__`, in the package.
"""

import importlib
import pkgutil
from types import ModuleType
from typing import Any, List

from mixtrain.mixing.apply import mix_images, mix_targets, one_hot, partner_weights
from mixtrain.mixing.method import (Mixer, MixingMethod, create_mixer, describe_augment, method_of, register_method,
                                    spec_of)
from mixtrain.mixing.plans import MixPlan, MixSpec, box_lam, cutmix_boxes, draw_plan, mix_spec, pair_partners


def import_modules() -> List[ModuleType]:
    """Every module of the package, in name order: importing a method's module registers the method."""
    return [importlib.import_module(f"{__name__}.{module.name}") for module in pkgutil.iter_modules(__path__)]


MODULES = import_modules()


def __getattr__(name: str) -> Any:
    """What a module of the package defines (``FMixConfig``, ``stage_modules``), as the package's own name."""
    for module in MODULES:
        value = vars(module).get(name)
        if getattr(value, "__module__", None) == module.__name__:
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODULES", "Mixer", "MixPlan", "MixSpec", "MixingMethod", "box_lam", "create_mixer", "cutmix_boxes",
           "describe_augment", "draw_plan", "method_of", "mix_images", "mix_spec", "mix_targets", "one_hot",
           "pair_partners", "partner_weights", "register_method", "spec_of"]
