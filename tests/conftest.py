"""Shared test setup: makes ``official_sam`` importable and provides sample images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data

_TESTS_DIR = str(Path(__file__).parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the compiled extension must load: tests of its kernels would otherwise skip."""
    from sam_lightning.ops import HAS_EXTENSION, LOAD_ERROR

    if os.environ.get("CI", "").lower() in ("1", "true") and not HAS_EXTENSION:
        pytest.exit(f"CI requires sam_lightning._C, which did not load: {LOAD_ERROR}", 3)


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
