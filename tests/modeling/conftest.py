"""Fixtures for model parity tests: a small official SAM with every weight random, and our
model loaded from its saved state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam_test_models import SMALL, build_official, randomize_, resize_longest

from sam_lightning.modeling import Sam, build_sam_custom


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory) -> tuple[torch.nn.Module, Sam]:
    """(official small SAM with random weights, ours loaded strictly from its .pth file)."""
    official = randomize_(build_official(**SMALL))
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    torch.save(official.state_dict(), path)
    return official, build_sam_custom(**SMALL, checkpoint=path)


@pytest.fixture(scope="session")
def input_images(sample_images) -> list[torch.Tensor]:
    """chelsea (landscape, 213×320) and coffee turned to portrait (320×213) in the small
    model's input frame."""
    portrait_coffee = np.ascontiguousarray(np.rot90(sample_images["coffee"]))
    return [
        resize_longest(image, SMALL["image_size"])
        for image in (sample_images["chelsea"], portrait_coffee)
    ]
