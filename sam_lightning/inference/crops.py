"""Point grids and crop windows of the automatic mask generator (the paper's App. B).

The arithmetic follows the official ``segment_anything.utils.amg`` exactly (same
``np.linspace`` grid, same integer rounding of crop sizes and overlaps), so that the same
parameters prompt the model at the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n_per_side**2 x 2`` points ``(x, y)`` in [0, 1], cell centres of a regular grid,
    row by row."""
    if n_per_side < 1:
        raise ValueError(f"points per side must be >= 1, got {n_per_side}")
    half_cell = 1 / (2 * n_per_side)
    centres = np.linspace(half_cell, 1 - half_cell, n_per_side)
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer ``i`` has ``int(n_per_side / scale_per_layer**i)``
    points per side."""
    per_side = [int(n_per_side / (scale_per_layer**i)) for i in range(n_layers + 1)]
    if min(per_side) < 1:
        raise ValueError(
            f"{n_per_side} points per side downscaled by {scale_per_layer} per layer leaves no "
            f"points in crop layer {per_side.index(min(per_side))}; use fewer crop layers or a "
            "smaller downscale factor"
        )
    return [build_point_grid(n) for n in per_side]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop windows ``[x0, y0, x1, y1]`` and their layer: the whole image (layer 0), then
    ``(2**i)**2`` overlapping windows in layer ``i``; the overlap of layer 1 is
    ``overlap_ratio`` of the short side, halved at each further layer."""
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        x_starts = [int((crop_w - overlap) * i) for i in range(per_side)]
        y_starts = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0 in x_starts:  # x-major order, as the official itertools.product
            for y0 in y_starts:
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """For XYXY ``boxes`` in the crop's frame: whether a side lies within ``atol`` pixels of
    an edge of the crop that is not also an edge of the image (such masks are cut off)."""
    x0, y0 = crop_box[0], crop_box[1]
    shifted = (boxes + boxes.new_tensor([x0, y0, x0, y0])).float()
    crop = torch.tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.tensor(image_box, dtype=torch.float, device=boxes.device)
    near_crop = (shifted - crop).abs() <= atol
    near_image = (shifted - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)
