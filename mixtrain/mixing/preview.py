"""A picture of one mixed training batch: each tile captioned with its labels and their weights."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mixtrain.config import AugmentConfig, DatasetConfig
from mixtrain.errors import MixtrainError
from mixtrain.mixing.method import create_mixer, method_of

MAX_TILES = 32
COLUMNS = 8
LINE_HEIGHT = 12


def caption(target: torch.Tensor, classes: Sequence[str]) -> List[str]:
    """Every label of a soft target, heaviest first, as ``["cat 0.62", "dog 0.38"]`` (one if unmixed; a
    method of k partners has up to k + 1)."""
    weights, labels = target.sort(descending=True)
    # The first label always; the others only where mixing put them, above label smoothing's floor.
    kept = [0] + [k for k in range(1, len(weights)) if float(weights[k]) > float(target.min()) + 1e-6]
    return [f"{classes[int(labels[k])]} {float(weights[k]):.2f}" for k in kept]


def render_grid(images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """``[H, W, 3]`` uint8 grid of normalized ``images`` with captions from ``targets``."""
    images, targets = images[:MAX_TILES].float().cpu(), targets[:MAX_TILES].float().cpu()
    pixels = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n, height, width = pixels.shape[:3]
    captions = [caption(target, classes) for target in targets]
    scale = max(1, 96 // max(height, width))  # small images are enlarged so captions fit
    tile_w, tile_h = width * scale, height * scale + LINE_HEIGHT * max(2, *map(len, captions)) + 2
    columns = min(COLUMNS, n)
    rows = -(-n // columns)
    canvas = Image.new("RGB", (columns * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(n):
        x, y = (i % columns) * tile_w, (i // columns) * tile_h
        tile = Image.fromarray(pixels[i]).resize((width * scale, height * scale), Image.NEAREST)
        canvas.paste(tile, (x, y))
        for k, line in enumerate(captions[i]):
            draw.text((x + 2, y + height * scale + 1 + LINE_HEIGHT * k), line, fill="black", font=font)
    return np.asarray(canvas)


def mixed_batch_grid(train, classes: Sequence[str], augment: AugmentConfig, dataset: DatasetConfig,
                     epochs: int, seed: int) -> np.ndarray:
    """Mix the first training batch of epoch 0 (a loader of the training split) with a mixer of its own
    (the run's stream is untouched)."""
    if not method_of(augment).previewable:
        layers = getattr(augment, "layers", None)
        where = f" after stages {list(layers)} (0 = the input)" if layers is not None else ""
        raise MixtrainError(f"augment={augment.name} mixes hidden features{where}, which have no picture: preview "
                            "augment=mixup to see the same lambdas on pixels")
    train.set_epoch(0)
    images, labels = next(iter(train))
    mixer = create_mixer(augment, len(classes), epochs, seed=seed + 1_000_000)
    images, targets = mixer(images.clone(), labels, epoch=0)
    if len(images) > len(labels):  # RegMixup: the clean batch, then its mixup: show the mixed half
        images, targets = images[len(labels):], targets[len(labels):]
        targets = targets / targets.sum(1, keepdim=True)
    return render_grid(images, targets, classes, dataset.mean, dataset.std)


def write_png(grid: np.ndarray, path: Path) -> Path:
    Image.fromarray(grid).save(path)
    return path
