"""Mosaic (Bochkovskiy et al. 2020, YOLOv4; for classifiers, RICAP, Takahashi et al. 2018): four images on
a 2x2 grid cut at a random centre, each image's label weighted by the area of its cell.

The centre ``(cy, cx)`` is uniform in ``[center_min, center_max]`` of each side (YOLOv5's mosaic
draws its centre in the middle half too); the sample keeps the top-left cell and its three partners
fill the top-right, bottom-left and bottom-right ones, each with its own pixels where they are (as
CutMix's box does; RICAP crops each image at a random place instead). No Beta draw: the centre sets
the areas, and a target row is their exact share. In pair mode four samples form a group and share
one centre, so across the group's four mosaics every image fills every cell once. With
``symmetric_lam`` the centre is reflected so that the sample's own cell is the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import require
from mixtrain.mixing.method import Mixer, region_weights, register_method, spec_of
from mixtrain.mixing.plans import MixSpec


@dataclass
class MosaicConfig(MixConfig):
    """Mosaic (Bochkovskiy et al. 2020): four images on a 2x2 grid cut at a random centre; labels by area."""

    name: str = "mosaic"
    center_min: float = 0.25  # the grid's centre: lowest, a fraction of each side (YOLOv5's: the middle half)
    center_max: float = 0.75  # the grid's centre: highest, a fraction of each side

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.center_min <= self.center_max <= 1.0, "augment.center_min/center_max",
                "must be 0 <= center_min <= center_max <= 1 (fractions of the image side)",
                [self.center_min, self.center_max])

    def spec(self) -> MixSpec:
        return spec_of(self, lam_draw="method", partners=3)  # the mixer draws the centre


def grid_boxes(centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[3, n, 4]``: the top-right, bottom-left and bottom-right cells ``(y_low, y_high, x_low, x_high)``
    of grids cut at ``centres`` (``[n, 2]`` pixel rows and columns); the top-left cell is the rest."""
    y, x = centres[:, 0], centres[:, 1]
    top, left, bottom, right = np.zeros_like(y), np.zeros_like(x), np.full_like(y, height), np.full_like(x, width)
    return np.stack([np.stack(cell, axis=1) for cell in ((top, y, x, right), (y, bottom, left, x),
                                                         (y, bottom, x, right))])


class MosaicMixer(Mixer):
    def draw_weights(self, n: int, height: int, width: int):
        cfg, size = self.cfg, np.array([height, width])
        fraction = cfg.center_min + self.rng.random((n, 2)) * (cfg.center_max - cfg.center_min)
        centres = (fraction * size).astype(np.int64)
        if cfg.symmetric_lam:  # the sample's own (top-left) cell at least half of each side
            centres = np.maximum(centres, size - centres)
        boxes = grid_boxes(centres, height, width)
        return region_weights(boxes, height, width), boxes


register_method("mosaic", MosaicConfig, MosaicMixer,
                label=lambda cfg: f"mosaic c={cfg.center_min:g}-{cfg.center_max:g}")
