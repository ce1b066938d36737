"""Mask generators of the RLE tests."""

from __future__ import annotations

import numpy as np


def blobs(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """N x H x W uint8 masks: unions of a few random ellipses (realistic shapes)."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(1, h / 3 + 1), rng.uniform(1, w / 3 + 1)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    return masks


def noise(rng: np.random.Generator, n: int, h: int, w: int, p: float = 0.5) -> np.ndarray:
    """N x H x W uint8 masks of independent random pixels."""
    return (rng.random((n, h, w)) < p).astype(np.uint8)


def to_fortran(masks: np.ndarray) -> np.ndarray:
    """pycocotools' layout: H x W x N, Fortran order."""
    return np.asfortranarray(masks.transpose(1, 2, 0))
