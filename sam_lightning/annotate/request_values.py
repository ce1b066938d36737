"""The annotation API's request values (points, a box, a mask) checked against the image
they prompt: each problem is a 400 :class:`~sam_lightning.annotate.store.ApiError` naming the
field."""

from __future__ import annotations

import json
import math
from typing import Any

from sam_lightning import ops
from sam_lightning.annotate.store import ApiError


def _preview(value: Any, limit: int = 60) -> str:
    """The start of ``value`` as JSON, for messages (never raises: a value nested too deeply
    or an integer too long to print is named by its type)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        return json.dumps(value)[:limit]
    except (ValueError, TypeError, RecursionError):
        return type(value).__name__


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{where} must be a finite number, got {_preview(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        raise ApiError(400, f"{where} must be a finite number, got {_preview(value)}") from None
    if not math.isfinite(number):
        raise ApiError(400, f"{where} must be a finite number, got {_preview(value)}")
    return number


def parse_points(value: Any, width: int, height: int, limit: int = 64) -> list[list[float]]:
    """``[[x, y, label], ...]`` with label 1 (foreground) or 0 (background), inside the
    image (``0 <= x <= width``, ``0 <= y <= height``). Raises ApiError 400."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise ApiError(400, f"points must be a list of at most {limit} [x, y, label] triples")
    points = []
    for i, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 3:
            raise ApiError(400, f"points[{i}] must be [x, y, label], got {_preview(point)}")
        x, y = _number(point[0], f"points[{i}][0]"), _number(point[1], f"points[{i}][1]")
        if point[2] not in (0, 1) or isinstance(point[2], bool):
            raise ApiError(400, f"points[{i}][2] (label) must be 1 (foreground) or 0 (background)")
        if not (0 <= x <= width and 0 <= y <= height):
            raise ApiError(400, f"points[{i}] = ({x}, {y}) is outside the {width} x {height} image")
        points.append([x, y, int(point[2])])
    return points


def parse_box(value: Any, width: int, height: int) -> list[float] | None:
    """``[x0, y0, x1, y1]`` with ``x0 <= x1`` and ``y0 <= y1`` that overlaps the image
    (``[0, width] x [0, height]``, the closed range points must lie in; a box partly
    outside is kept, as SAM takes it), or None. Raises ApiError 400."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4:
        raise ApiError(400, f"box must be [x0, y0, x1, y1] or null, got {_preview(value)}")
    box = [_number(v, f"box[{i}]") for i, v in enumerate(value)]
    if box[2] < box[0] or box[3] < box[1]:
        raise ApiError(400, f"box {box} must satisfy x0 <= x1 and y0 <= y1")
    if box[2] < 0 or box[0] > width or box[3] < 0 or box[1] > height:
        raise ApiError(
            400,
            f"box {box} is outside the {width} x {height} image: a box must overlap "
            f"[0, {width}] x [0, {height}]",
        )
    return box


def parse_mask(value: Any, width: int, height: int) -> dict[str, Any]:
    """A COCO RLE of the image's size (``counts`` compressed string or run lengths) as a
    canonical compressed RLE with ``str`` counts. Raises ApiError 400."""
    if not isinstance(value, dict) or "size" not in value or "counts" not in value:
        raise ApiError(400, 'mask must be a COCO RLE {"size": [height, width], "counts": ...}')
    if value["size"] != [height, width]:
        raise ApiError(
            400,
            f"mask size {_preview(value['size'], 40)} differs from the image's "
            f"[height, width] = [{height}, {width}]",
        )
    try:
        decoded = ops.rle_decode({"size": value["size"], "counts": value["counts"]})
    except (ValueError, TypeError, OverflowError) as error:
        raise ApiError(400, f"mask is not a valid RLE: {error}") from None
    if not decoded.any():
        raise ApiError(400, "mask is empty")
    rle = ops.rle_encode(decoded)[0]
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
