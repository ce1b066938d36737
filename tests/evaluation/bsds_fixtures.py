"""Generated BSDS500-like data for the edge tests: segmentations by several annotators,
their boundary maps, edge maps of a detector, and the official files (JPEG images and
``groundTruth`` ``.mat`` files) laid out as the BSDS500 release.

Annotators segment the same scene: regions grow from shared seeds over a smoothly warped
plane, each annotator with its own small warp (boundaries a pixel or two apart) and its own
granularity (some regions merged). Edge maps are blurred boundaries with noise, spurious
texture edges and gaps, quantised to 8 bits as PNG files are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from sam_lightning.data.bsds import boundaries_from_segmentation, write_ground_truth


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal((h, w)), scale, mode="wrap") * scale


def annotator_segmentations(
    rng: np.random.Generator, h: int, w: int, annotators: int = 5, regions: int = 24
) -> np.ndarray:
    """``annotators x h x w`` int32 label maps (labels from 1) of one random scene."""
    seeds = rng.uniform([0, 0], [h, w], (regions, 2))
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    warp_y, warp_x = _smooth_noise(rng, h, w, 12.0), _smooth_noise(rng, h, w, 12.0)
    out = np.empty((annotators, h, w), np.int32)
    for a in range(annotators):
        jitter_y, jitter_x = _smooth_noise(rng, h, w, 3.0), _smooth_noise(rng, h, w, 3.0)
        py, px = ys + warp_y + jitter_y, xs + warp_x + jitter_x
        distance = (py[None] - seeds[:, 0, None, None]) ** 2
        distance += (px[None] - seeds[:, 1, None, None]) ** 2
        labels = distance.argmin(0)
        merge = np.arange(regions)
        merged = rng.random(regions) < rng.uniform(0.0, 0.4)
        merge[merged] = rng.integers(0, regions, int(merged.sum()))
        out[a] = merge[labels] + 1
    return out


def annotator_boundaries(segmentations: np.ndarray) -> np.ndarray:
    """``annotators x h x w`` bool boundary maps of the segmentations (BSDS seg2bmap)."""
    return np.stack([boundaries_from_segmentation(s) for s in segmentations])


def detector_edges(
    rng: np.random.Generator, boundaries: np.ndarray, quality: float = 0.7
) -> np.ndarray:
    """An ``h x w`` float64 edge map in [0, 1] (multiples of 1/255, zero on most pixels) of
    a fair detector: the annotators' agreement on each boundary pixel, weakened in places,
    plus the boundaries of an unrelated segmentation (texture), slightly blurred."""
    annotators, h, w = boundaries.shape
    agreement = boundaries.mean(0)
    weakening = 0.3 + 0.7 * (ndimage.gaussian_filter(rng.random((h, w)), 8) > 0.5)
    texture = annotator_boundaries(annotator_segmentations(rng, h, w, 1, regions=12))[0]
    texture = texture & (rng.random((h, w)) < 0.7)
    clutter = texture * rng.uniform(0.05, 0.6, (h, w))
    edges = np.maximum(quality * agreement * weakening, (1 - quality) * clutter)
    edges = ndimage.gaussian_filter(edges, 0.7)
    edges = np.clip(edges / max(edges.max(), 1e-12), 0, 1)
    return np.round(edges * 255) / 255


def scene_image(rng: np.random.Generator, segmentation: np.ndarray) -> np.ndarray:
    """An ``h x w x 3`` uint8 picture of a segmentation: one colour per region plus noise."""
    colours = rng.integers(0, 256, (segmentation.max() + 1, 3))
    image = colours[segmentation] + rng.normal(0, 8, (*segmentation.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_bsds_split(
    root: Path,
    split: str,
    names: list[str],
    rng: np.random.Generator,
    h: int,
    w: int,
    annotators: int = 5,
) -> dict[str, np.ndarray]:
    """Writes ``images/<split>/<name>.jpg`` and ``groundTruth/<split>/<name>.mat`` under
    ``root`` for each name; returns each name's boundaries (``annotators x h x w`` bool)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "groundTruth" / split).mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        segmentations = annotator_segmentations(rng, h, w, annotators)
        boundaries = annotator_boundaries(segmentations)
        Image.fromarray(scene_image(rng, segmentations[0])).save(
            root / "images" / split / f"{name}.jpg", quality=90
        )
        write_ground_truth(root / "groundTruth" / split / f"{name}.mat", segmentations, boundaries)
        out[name] = boundaries
    return out
