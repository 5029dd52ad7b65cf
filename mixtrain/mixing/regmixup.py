"""RegMixup (Pinto et al. 2022): train on the clean batch and on its Mixup together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from mixtrain.config.errors import at_least
from mixtrain.mixing.method import Mixer, register_method
from mixtrain.mixing.mixup import MixupConfig


@dataclass
class RegMixupConfig(MixupConfig):
    """RegMixup (Pinto et al. 2022): train on the clean batch and on its Mixup, as one batch.

    loss = CE(clean) + eta * CE(mixed), with a large alpha (the paper's range: 10 to 20), so
    mixup acts as a regularizer beside the clean loss; it keeps Mixup's accuracy and fixes its
    calibration (Pinto et al. 2022, NeurIPS).
    """

    name: str = "regmixup"
    alpha: float = 20.0  # Beta(alpha, alpha) of the mixed half of each batch
    eta: float = 1.0  # weight of the mixed half's loss

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self.eta, 0.0, "augment.eta")


class RegMixupMixer(Mixer):
    """The clean batch and its Mixup go through the model as one batch of ``2B`` rows, clean first.

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


    def row_sums(self, rows: int, own: int) -> torch.Tensor:
        """The clean rows sum to 2, the appended mixed ones to ``2 * eta`` (the scaling above)."""
        if rows == own:  # mixing off (augment.disable_epochs): plain targets
            return torch.ones(rows)
        return torch.cat([torch.full((own,), 2.0), torch.full((rows - own,), 2.0 * self.cfg.eta)])


# Its two losses are cross-entropies: the scaled targets above rely on it.
register_method("regmixup", RegMixupConfig, RegMixupMixer, loss="soft_ce")
