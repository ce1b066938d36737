"""ResizeLongestSide against the official transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from sam_lightning.transforms import ResizeLongestSide


@pytest.fixture(scope="module")
def official_transform(official):
    return official.utils.transforms.ResizeLongestSide


@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 2048))
def test_preprocess_shape_matches_official(official_transform, oldh, oldw, target):
    """The official size, except that a short side it rounds to 0 is 1 pixel."""
    expected = official_transform.get_preprocess_shape(oldh, oldw, target)
    expected = tuple(max(1, side) for side in expected)
    assert ResizeLongestSide.get_preprocess_shape(oldh, oldw, target) == expected


@pytest.mark.parametrize(
    ("shape", "target", "official_size", "size"),
    [((20000, 8), 1024, (1024, 0), (1024, 1)), ((3, 2000), 256, (0, 256), (1, 256))],
)
def test_an_extreme_aspect_ratio_keeps_one_pixel(
    official_transform, shape, target, official_size, size
):
    assert official_transform.get_preprocess_shape(*shape, target) == official_size
    assert ResizeLongestSide.get_preprocess_shape(*shape, target) == size
    image = np.zeros((*shape, 3), dtype=np.uint8)
    assert ResizeLongestSide(target).apply_image(image).shape == (*size, 3)


@pytest.mark.parametrize("target", [256, 1024])
def test_apply_image_is_bit_exact(official_transform, images, target):
    for image in images.values():
        expected = official_transform(target).apply_image(image)
        actual = ResizeLongestSide(target).apply_image(image)
        assert actual.shape == expected.shape and max(actual.shape[:2]) == target
        np.testing.assert_array_equal(actual, expected)


def test_coords_and_boxes_match_official(official_transform):
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 450, (5, 7, 2))
    boxes = rng.uniform(0, 450, (6, 4))
    reference, ours = official_transform(1024), ResizeLongestSide(1024)
    for size in [(300, 451), (400, 600), (1000, 37)]:
        for method, value in (("apply_coords", coords), ("apply_boxes", boxes)):
            expected = getattr(reference, method)(value, size)
            actual = getattr(ours, method)(value, size)
            assert actual.dtype == np.float64
            np.testing.assert_array_equal(actual, expected)
        for method, value in (("apply_coords_torch", coords), ("apply_boxes_torch", boxes)):
            tensor = torch.from_numpy(value)
            expected = getattr(reference, method)(tensor, size)
            actual = getattr(ours, method)(tensor, size)
            assert actual.dtype == torch.float32
            torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    integer_coords = np.array([[3, 4]])
    ours.apply_coords(integer_coords, (300, 451))
    np.testing.assert_array_equal(integer_coords, [[3, 4]])  # inputs are not modified


def test_apply_image_torch(official_transform):
    image = torch.rand(2, 3, 30, 45)
    actual = ResizeLongestSide(64).apply_image_torch(image)
    expected = F.interpolate(image, (43, 64), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    # The official version reads the target size from shape[0:2]; where those equal H, W
    # the two agree.
    square_shape = torch.rand(6, 9, 6, 9)
    torch.testing.assert_close(
        ResizeLongestSide(12).apply_image_torch(square_shape),
        official_transform(12).apply_image_torch(square_shape),
        atol=0,
        rtol=0,
    )
