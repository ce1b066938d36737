"""Helpers shared by the ``tools/bench_*.py`` scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import skimage.data
from PIL import Image


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Smallest wall-clock time of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench_image(height: int, width: int) -> np.ndarray:
    """skimage's ``coffee()`` photo resized (PIL bicubic) to ``height`` x ``width``."""
    image = Image.fromarray(skimage.data.coffee()).resize((width, height), Image.BICUBIC)
    return np.array(image)
