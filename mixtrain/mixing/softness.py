"""How soft a run's training targets are when label smoothing is stacked on mixing (issue 36).

Mixing softens each target (a mix of two labels) and label smoothing softens it again; stacked
far enough, the targets tend to underfit and leave the model underconfident (Wen et al. 2021,
*Combining Ensembles and Data Augmentation Can Harm Your Calibration*). How far is far is not a
property of one alpha: it depends on the method, its mode and probability, the CutMix boxes and
the classes. So it is measured, over many draws of the run's own mixer on the first batch, as
the mean weight a target puts on its dominant class, and compared with the same measure, on the
same images, of the setting ImageNet training uses routinely: timm's DeiT setting (Mixup 0.8 or
CutMix 1.0 per batch, label smoothing 0.1; Touvron et al. 2021).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch

from mixtrain.mixing.method import create_mixer
from mixtrain.mixing.mixup import SwitchConfig

# DeiT's setting (Touvron et al. 2021; recipes/deit_small_imagefolder.yaml): a stacking that trains routinely.
DEIT = SwitchConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1)
DEIT_LABEL = "mixup 0.8 / CutMix 1.0 per batch, label_smoothing 0.1"
DRAWS = 64  # plans per measure: the standard error is what decides, so batch mode (one lambda a draw) is fair
IMAGES = 32  # of the first batch: enough pairs for every mode, cheap for 64 draws of large images
MARGIN = 3.0  # standard errors of the difference before the run is called softer than DeiT's


def dominant_mass(augment: Any, num_classes: int, images: torch.Tensor, labels: torch.Tensor, seed: int,
                  draws: int = DRAWS) -> Tuple[float, float]:
    """Mean weight of each training target's dominant class over ``draws`` plans of ``augment``'s
    mixer on ``images``, and its standard error (over the draws' means)."""
    mixer = create_mixer(augment, num_classes, epochs=1, seed=seed)
    means = []
    for _ in range(draws):
        _, targets = mixer(images.clone(), labels, 0)
        p = targets.double() / targets.double().sum(1, keepdim=True)  # RegMixup scales its halves
        means.append(float(p.max(1).values.mean()))
    mean = sum(means) / len(means)
    spread = math.sqrt(sum((m - mean) ** 2 for m in means) / max(len(means) - 1, 1))
    return mean, spread / math.sqrt(len(means))


def stacked_smoothing_warning(augment: Any, num_classes: int, images: torch.Tensor, labels: torch.Tensor,
                              seed: int) -> Optional[str]:
    """A warning when ``augment``'s targets (mixing and ``label_smoothing`` together) are softer than
    timm's DeiT setting gives on the same images, saying what was measured; else None."""
    images, labels = images[:IMAGES], labels[:IMAGES]
    run, run_se = dominant_mass(augment, num_classes, images, labels, seed)
    deit, deit_se = dominant_mass(DEIT, num_classes, images, labels, seed + 1)
    if deit - run <= MARGIN * math.sqrt(run_se ** 2 + deit_se ** 2):
        return None
    return (f"augment.label_smoothing={augment.label_smoothing:g} on top of augment={augment.name}: a training target "
            f"puts {run:.3f} on its dominant class on average ({DRAWS} draws on {len(labels)} images of the first "
            f"batch), against {deit:.3f} under timm's DeiT setting ({DEIT_LABEL}) on the same images; targets this "
            "soft tend to underfit and leave the model underconfident: lower augment.label_smoothing or the mixing")
