"""FGSM robustness: top-1 under the fast gradient sign attack (Goodfellow et al. 2015).

The mixup paper (Zhang et al. 2018, Section 3.5, Table 3) reports that mixup models
lose less top-1 to white-box FGSM than ERM models. The attack moves every pixel by
``eps`` in the direction that raises the loss of the true label:
``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``. ``eps`` is measured in
[0, 1] pixel space, before normalization, as in the papers; the loaders hand out
normalized images, so the step is taken in pixel space and mapped back.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def fgsm_step(images: torch.Tensor, grad_sign: torch.Tensor, eps: float, mean: torch.Tensor,
              std: torch.Tensor) -> torch.Tensor:
    """Normalized ``images`` moved by ``eps * grad_sign`` in [0, 1] pixel space, clipped to [0, 1].

    The step is clamped to what keeps each pixel inside [0, 1] and added to the
    normalized images directly (not round-tripped through pixel space), so that
    ``eps = 0`` returns exactly the input: FGSM at epsilon 0 is the clean accuracy.
    """
    pixels = (images * std + mean).clamp(0, 1)
    delta = torch.clamp(eps * grad_sign, min=-pixels, max=1 - pixels)
    return images + delta / std


def input_gradient_sign(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sign(d CE / d images)`` for the true labels, with the model's weights left untouched."""
    images = images.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(images).float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, images)
    return grad.sign()


def fgsm_predictions(model: nn.Module, batches: Iterable, eps_list: Sequence[float], mean: Sequence[float],
                     std: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(predictions [E, N], labels [N])``: the top-1 class of every image under FGSM at each ``eps``.

    One gradient per batch serves every epsilon: FGSM's direction depends only on the
    clean image. The model runs in eval mode (BatchNorm statistics fixed, no dropout).
    Kept per image so that two models attacked on the same images can be compared paired.
    """
    model.eval()
    if not eps_list:  # no attack asked for: no gradient to take
        return torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    predictions, labels_seen = [], []
    requires_grad = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # gradients for the input only
    try:
        for images, labels in batches:
            device = images.device
            mean_t = torch.tensor(mean, dtype=images.dtype, device=device).view(1, -1, 1, 1)
            std_t = torch.tensor(std, dtype=images.dtype, device=device).view(1, -1, 1, 1)
            grad_sign = input_gradient_sign(model, images, labels)
            with torch.no_grad():
                predictions.append(torch.stack([model(fgsm_step(images, grad_sign, eps, mean_t, std_t)).argmax(dim=1)
                                                for eps in eps_list]).cpu())
            labels_seen.append(labels.cpu())
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    if not predictions:
        return torch.zeros(len(eps_list), 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(predictions, 1), torch.cat(labels_seen)


def fgsm_accuracy(predictions: torch.Tensor, labels: torch.Tensor, eps_list: Sequence[float]) -> List[Dict[str, float]]:
    """Top-1 (%) under FGSM for each ``eps`` from :func:`fgsm_predictions`."""
    correct = predictions.eq(labels).double().sum(1)
    seen = len(labels)
    return [{"eps": float(eps), "acc1": 100.0 * float(c) / seen if seen else float("nan")}
            for eps, c in zip(eps_list, correct)]
