"""Mask overlays for logging: colours where masks are and are not, outlines, clicks, boxes
and the side-by-side validation panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_lightning.training.overlays import (
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    RING_COLOUR,
    overlay_masks,
    palette,
    validation_panels,
)

H, W = 40, 60


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (3, H, W), dtype=torch.uint8)


def square_masks() -> torch.Tensor:
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 20:35, 30:55] = True
    return masks


def pixel(array: np.ndarray, x: int, y: int) -> list[int]:
    return array[y, x].tolist()


def test_palette_is_distinct_and_deterministic():
    colours = palette(64)
    assert colours.shape == (64, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours.tolist()}) == 64
    np.testing.assert_array_equal(palette(3), colours[:3])
    assert palette(0).shape == (0, 3)


def test_masks_are_blended_inside_outlined_and_absent_outside(image):
    masks = square_masks()
    out = overlay_masks(image, masks, alpha=0.5)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    colours = palette(2).astype(np.float64)
    source = image.permute(1, 2, 0).numpy().astype(np.float64)
    inside = np.zeros((H, W), dtype=bool)
    inside[6:14, 6:19] = True  # mask 0 without its outline
    expected = np.round(0.5 * source[inside] + 0.5 * colours[0])
    np.testing.assert_array_equal(out[inside], expected)
    outline = masks[0].numpy() & ~inside
    assert (out[outline] == palette(2)[0]).all()
    outside = ~masks.any(0).numpy()
    np.testing.assert_array_equal(out[outside], image.permute(1, 2, 0).numpy()[outside])
    # alpha 0 leaves the fill untouched, alpha 1 paints the colour
    np.testing.assert_array_equal(
        overlay_masks(image, masks, alpha=0.0)[inside], source[inside].astype(np.uint8)
    )
    assert (overlay_masks(image, masks, alpha=1.0)[inside] == palette(2)[0]).all()


def test_later_masks_are_drawn_over_earlier_ones(image):
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[:, 10:30, 10:30] = True
    out = overlay_masks(image, masks, alpha=1.0)
    assert pixel(out, 20, 20) == palette(2)[1].tolist()


def test_clicks_are_discs_at_their_pixels(image):
    masks = torch.zeros(0, H, W, dtype=torch.bool)
    points = [(10, 20, 1), (40.2, 8.7, 0), (50, 30, -1)]
    out = overlay_masks(image, masks, points=points, point_radius=3)
    assert pixel(out, 10, 20) == list(POSITIVE_COLOUR)
    assert pixel(out, 13, 20) == list(POSITIVE_COLOUR)  # on the radius
    assert pixel(out, 14, 20) == list(RING_COLOUR)  # the ring just outside
    assert pixel(out, 12, 22) == list(POSITIVE_COLOUR)  # 2² + 2² ≤ 3²
    untouched = image.permute(1, 2, 0).numpy()
    assert pixel(out, 13, 23) == pixel(untouched, 13, 23)  # 3² + 3² > 4²: beyond the ring
    assert pixel(out, 40, 9) == list(NEGATIVE_COLOUR)  # rounded to the nearest pixel
    assert pixel(out, 50, 30) == pixel(untouched, 50, 30)  # padding label: no click
    as_tensor = overlay_masks(image, masks, torch.tensor(points), point_radius=3)
    np.testing.assert_array_equal(as_tensor, out)
    corner = overlay_masks(image, masks, [(0, 0, 1)], point_radius=3)  # clipped to the frame
    assert pixel(corner, 0, 0) == list(POSITIVE_COLOUR)


def test_boxes_are_rectangles_in_their_mask_colour(image):
    masks = square_masks()
    boxes = torch.tensor([[2.0, 3.0, 25.0, 17.0]])
    out = overlay_masks(image, masks, boxes=boxes, line_width=2)
    colour = palette(2)[0].tolist()
    for x, y in [(2, 3), (25, 17), (12, 3), (12, 4), (2, 10), (3, 10), (25, 10), (24, 10)]:
        assert pixel(out, x, y) == colour, (x, y)
    untouched = image.permute(1, 2, 0).numpy()
    assert pixel(out, 12, 2) == pixel(untouched, 12, 2)  # above the box
    assert pixel(out, 4, 10) == pixel(untouched, 4, 10)  # inside the 2-pixel frame
    overflowing = overlay_masks(image, masks, boxes=torch.tensor([[-5, -5, 100, 100]]))
    assert pixel(overflowing, 0, 0) == colour and pixel(overflowing, W - 1, H - 1) == colour


def test_validation_panels_put_ground_truth_and_prediction_side_by_side(image):
    gt = square_masks()
    pred = torch.zeros_like(gt)
    pred[1, 22:30, 32:50] = True
    points = torch.tensor([[40, 25, 1]])
    panels = validation_panels(image, gt, pred, points=points, gap=4)
    assert panels.shape == (H, 2 * W + 4, 3) and panels.dtype == np.uint8
    np.testing.assert_array_equal(panels[:, :W], overlay_masks(image, gt))
    assert (panels[:, W : W + 4] == 255).all()
    np.testing.assert_array_equal(panels[:, W + 4 :], overlay_masks(image, pred, points))
    assert pixel(panels, W + 4 + 40, 25) == list(POSITIVE_COLOUR)
    assert pixel(panels, 40, 25) != list(POSITIVE_COLOUR)  # clicks only on the prediction


def test_inputs_are_checked(image):
    with pytest.raises(ValueError, match="uint8"):
        overlay_masks(image.float(), square_masks())
    with pytest.raises(ValueError, match="masks"):
        overlay_masks(image, square_masks()[:, :10])
