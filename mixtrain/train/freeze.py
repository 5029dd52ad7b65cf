"""``model.freeze=backbone``: train the classifier alone for ``model.freeze_epochs`` (or the whole run).

While frozen, every parameter outside the classifier has ``requires_grad`` off (the optimizer, made
with them all, skips a parameter without a gradient: no update, no weight decay, no momentum) and the
backbone's BatchNorm layers stay in eval mode, so their running statistics hold still too, as timm's
``freeze`` helpers do. Whether an epoch is frozen is a function of the epoch alone: resume is exact.
"""

from __future__ import annotations

from typing import List, Optional

from torch import nn

from mixtrain.errors import MixtrainError
from mixtrain.models.weights import classifier_prefixes
from mixtrain.train.engine import Part, Trainer


class Freeze(Part):
    name = "freeze"

    def __init__(self, model: nn.Module, epochs: Optional[int]) -> None:
        prefixes = classifier_prefixes(getattr(model, "pretrained_cfg", None))
        in_head = lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)  # noqa: E731
        self.backbone: List[nn.Parameter] = [p for n, p in model.named_parameters() if not in_head(n)]
        if not prefixes or len(self.backbone) == len(list(model.parameters())):
            raise MixtrainError(f"model.freeze=backbone needs to know the model's classifier, and {type(model).__name__} "
                                "has no pretrained_cfg['classifier'] naming it: drop model.freeze")
        self.norms = [m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      and not in_head(n)]
        self.epochs = epochs

    def frozen(self, epoch: int) -> bool:
        return self.epochs is None or epoch < self.epochs

    def epoch_start(self, trainer: Trainer, steps: int) -> None:
        frozen = self.frozen(trainer.state.epoch)
        for p in self.backbone:
            p.requires_grad_(not frozen)
        if frozen:  # after the trainer's model.train(): the backbone's statistics stay as they are
            for m in self.norms:
                m.eval()

    def stop(self, trainer: Trainer, error) -> None:
        for p in self.backbone:  # the model leaves the run whole (EMA, export, a later init_from)
            p.requires_grad_(True)
