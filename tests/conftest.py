"""Shared test setup: makes ``official_sam`` importable and provides sample images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data

_TESTS_DIR = str(Path(__file__).parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


@pytest.fixture(scope="session")
def official():
    """The official ``segment_anything`` package."""
    from official_sam import import_official

    return import_official()


@pytest.fixture(scope="session")
def sample_images() -> dict[str, np.ndarray]:
    """RGB uint8 ``H×W×3`` images of different, partly non-square sizes."""
    return {
        "chelsea": skimage.data.chelsea(),  # 300×451
        "coffee": skimage.data.coffee(),  # 400×600
        "astronaut": skimage.data.astronaut(),  # 512×512
    }
