"""Mask overlays for logging (e.g. ``wandb.Image``): masks in distinct colours with their
outlines, clicks as discs and boxes as rectangles, drawn with numpy alone.

Coordinates follow :mod:`~sam_lightning.training.prompts`: a point ``(x, y)`` is the pixel of
column ``x`` and row ``y``; a box ``(x0, y0, x1, y1)`` includes its last row and column.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from sam_lightning.modeling.prompt_encoder import NEGATIVE, POSITIVE

#: Colours of positive and negative clicks, and of the ring that sets clicks off the image.
POSITIVE_COLOUR = (0, 255, 0)
NEGATIVE_COLOUR = (255, 0, 0)
RING_COLOUR = (255, 255, 255)

_GOLDEN_RATIO = 0.618033988749895
_FIRST_HUE = 0.55  # blue: the first masks differ from the green and red of the clicks

Points = Tensor | np.ndarray | Sequence[tuple[float, float, int]]


def palette(count: int) -> np.ndarray:
    """``count×3`` uint8 RGB colours, hues a golden-ratio turn apart (from blue): distinct,
    and the same for the same index whatever ``count``."""
    hues = (_FIRST_HUE + np.arange(count) * _GOLDEN_RATIO) % 1.0
    colours = [colorsys.hsv_to_rgb(hue, 0.75, 0.95) for hue in hues]
    return np.round(np.array(colours, dtype=np.float64).reshape(count, 3) * 255).astype(np.uint8)


def _numpy(array: Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _outlines(masks: np.ndarray) -> np.ndarray:
    """Pixels of ``K×H×W`` masks with a 4-neighbour outside the mask (beyond the frame
    counts as outside)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    interior = (
        padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    return masks & ~interior


def _disc(canvas: np.ndarray, x: int, y: int, radius: int, colour: Sequence[int]) -> None:
    """Fills the pixels within ``radius`` of pixel ``(x, y)`` (clipped to the canvas)."""
    h, w = canvas.shape[:2]
    y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
    x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = colour


def _rectangle(canvas: np.ndarray, box: np.ndarray, width: int, colour: Sequence[int]) -> None:
    """Draws the outline of ``(x0, y0, x1, y1)`` (last row and column included), ``width``
    pixels thick inwards, clipped to the canvas."""
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x0 > x1 or y0 > y1:
        return
    canvas[y0 : min(y0 + width, y1 + 1), x0 : x1 + 1] = colour
    canvas[max(y1 - width + 1, y0) : y1 + 1, x0 : x1 + 1] = colour
    canvas[y0 : y1 + 1, x0 : min(x0 + width, x1 + 1)] = colour
    canvas[y0 : y1 + 1, max(x1 - width + 1, x0) : x1 + 1] = colour


def overlay_masks(
    image: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    points: Points | None = None,
    boxes: Tensor | np.ndarray | None = None,
    alpha: float = 0.5,
    point_radius: int | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """Draws masks, clicks and boxes over an image.

    Mask ``k`` is blended in ``palette(K)[k]`` with opacity ``alpha`` (later masks over
    earlier ones) and outlined in the same colour, opaque; box ``k`` is a rectangle in
    that colour too. Clicks are discs, green (positive, label 1) or red (negative, label
    0), in a white ring one pixel wide; label -1 (padding) is skipped.

    Args:
        image: ``3×H×W`` uint8 RGB.
        masks: ``K×H×W`` bool.
        points: ``(x, y, label)`` triples, or an ``N×3`` tensor or array of them.
        boxes: ``K'×4`` ``(x0, y0, x1, y1)``.
        alpha: opacity of the mask fill.
        point_radius: disc radius in pixels; default 1% of the longest side, at least 2.
        line_width: outline thickness of boxes; default 0.3% of the longest side, at least 1.

    Returns:
        ``H×W×3`` uint8 RGB.
    """
    image, masks = _numpy(image), _numpy(masks).astype(bool)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a 3×H×W uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[1:]
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise ValueError(f"expected K×{h}×{w} masks, got {masks.shape}")
    longest = max(h, w)
    point_radius = max(2, round(0.01 * longest)) if point_radius is None else point_radius
    line_width = max(1, round(0.003 * longest)) if line_width is None else line_width
    box_array = np.zeros((0, 4)) if boxes is None else _numpy(boxes).reshape(-1, 4)
    colours = palette(max(len(masks), len(box_array)))

    blended = image.transpose(1, 2, 0).astype(np.float32)
    for mask, colour in zip(masks, colours):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * colour
    canvas = np.round(blended).clip(0, 255).astype(np.uint8)
    for outline, colour in zip(_outlines(masks), colours):
        canvas[outline] = colour
    for box, colour in zip(box_array, colours):
        _rectangle(canvas, box, line_width, colour)
    click_colours = {POSITIVE: POSITIVE_COLOUR, NEGATIVE: NEGATIVE_COLOUR}
    for x, y, label in np.zeros((0, 3)) if points is None else _numpy(points).reshape(-1, 3):
        if int(label) in click_colours:
            x, y = int(round(float(x))), int(round(float(y)))
            _disc(canvas, x, y, point_radius + 1, RING_COLOUR)
            _disc(canvas, x, y, point_radius, click_colours[int(label)])
    return canvas


def validation_panels(
    image: Tensor | np.ndarray,
    gt_masks: Tensor | np.ndarray,
    pred_masks: Tensor | np.ndarray,
    points: Points | None = None,
    boxes: Tensor | np.ndarray | None = None,
    alpha: float = 0.5,
    gap: int = 8,
) -> np.ndarray:
    """Ground truth (left) and prediction (right) side by side, mask ``k`` in the same
    colour in both, the prompts (clicks, boxes) on the prediction; see
    :func:`overlay_masks`.

    Returns:
        ``H×(2W + gap)×3`` uint8 RGB, the panels ``gap`` white columns apart.
    """
    left = overlay_masks(image, gt_masks, alpha=alpha)
    right = overlay_masks(image, pred_masks, points, boxes, alpha=alpha)
    separator = np.full((left.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, separator, right], axis=1)
