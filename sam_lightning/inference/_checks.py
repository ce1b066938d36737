"""Vectorised validation of images and prompts, with messages that name the offending value.

Every check works on whole tensors (no Python loop over prompts); only when a check fails is
the first offending element looked up for the message. NumPy inputs are viewed as tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

VALID_LABELS = (-1, 0, 1, 2, 3)
IMAGE_FORMATS = ("RGB", "BGR")


def check_image(image: Any, name: str = "image") -> None:
    """Raises ValueError unless ``image`` is a non-empty uint8 HxWx3 NumPy array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a uint8 HxWx3 numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"{name} must be a uint8 HxWx3 array, got dtype {image.dtype} and shape {image.shape}"
        )


def check_image_format(image_format: str) -> None:
    """Raises ValueError unless ``image_format`` is 'RGB' or 'BGR'."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """Views an array-like as a tensor (no copy for NumPy arrays and tensors)."""
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from error


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _check_finite(values: torch.Tensor, name: str) -> None:
    if values.is_floating_point():
        bad = ~torch.isfinite(values)
        if bad.any():
            index = _first_index(bad)
            raise ValueError(
                f"{name} must be finite, got {values[index].item()} at {name}{list(index)}"
            )


def check_points(
    coords: torch.Tensor,
    labels: torch.Tensor | None,
    batch_dims: int,
    image_size: tuple[int, int],
    frame: str,
    tolerance: float = 0.0,
) -> None:
    """Checks ``coords`` (*batch, N, 2) XY points and their (*batch, N) ``labels``.

    ``batch_dims`` is the number of leading batch dimensions (0 or 1); points must lie in
    ``[0, W] x [0, H]`` of ``image_size`` = (H, W), up to ``tolerance``; ``frame`` names that
    coordinate frame in messages.
    """
    if labels is None:
        raise ValueError("point_labels must be supplied if point_coords is supplied")
    layout = "BxNx2" if batch_dims else "Nx2"
    if coords.ndim != batch_dims + 2 or coords.shape[-1] != 2:
        raise ValueError(f"point_coords must have shape {layout}, got {tuple(coords.shape)}")
    if tuple(labels.shape) != tuple(coords.shape[:-1]):
        raise ValueError(
            f"point_labels must have shape {tuple(coords.shape[:-1])} to match point_coords "
            f"{tuple(coords.shape)}, got {tuple(labels.shape)}"
        )
    _check_finite(coords, "point_coords")
    valid = torch.tensor(VALID_LABELS, dtype=labels.dtype, device=labels.device)
    bad_label = ~torch.isin(labels, valid)
    if bad_label.any():
        index = _first_index(bad_label)
        raise ValueError(
            f"point_labels must be in {set(VALID_LABELS)}, got {labels[index].item()} at "
            f"point_labels{list(index)}"
        )
    height, width = image_size
    x, y = coords[..., 0], coords[..., 1]
    outside = (x < -tolerance) | (x > width + tolerance)
    outside |= (y < -tolerance) | (y > height + tolerance)
    if outside.any():
        index = _first_index(outside)
        point = tuple(float(v) for v in coords[index])
        raise ValueError(
            f"point_coords{list(index)} = {point} is outside the {frame} of size "
            f"W x H = {width} x {height}: x must be in [0, {width}] and y in [0, {height}]"
        )


def check_boxes(boxes: torch.Tensor, batched: bool) -> torch.Tensor:
    """Checks XYXY boxes (shape 4 or 1x4 if not ``batched``, else Bx4); returns them as Bx4.
    Boxes may extend beyond the image; :func:`check_boxes_overlap` requires them to meet it."""
    valid = boxes.ndim == 2 and boxes.shape[1] == 4
    if not batched:
        valid = tuple(boxes.shape) in ((4,), (1, 4))
    if not valid:
        layout = "Bx4" if batched else "4 (or 1x4)"
        raise ValueError(f"box must have shape {layout} in XYXY format, got {tuple(boxes.shape)}")
    boxes = boxes.reshape(-1, 4)
    _check_finite(boxes, "box")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        index = _first_index(inverted)[0]
        raise ValueError(
            f"box[{index}] = {[float(v) for v in boxes[index]]} must satisfy x0 <= x1 and y0 <= y1"
        )
    return boxes


def check_boxes_overlap(
    boxes: torch.Tensor, image_size: tuple[int, int], frame: str, tolerance: float = 0.0
) -> None:
    """Raises ValueError unless every box of ``boxes`` (Bx4 XYXY, already checked by
    :func:`check_boxes`) overlaps ``[0, W] x [0, H]`` of ``image_size`` = (H, W), up
    to ``tolerance``: the closed range points must lie in (:func:`check_points`). A
    box partly outside the image is accepted, as the official SAM takes it; one with no
    overlap prompts nothing in the image."""
    height, width = image_size
    outside = (boxes[:, 2] < -tolerance) | (boxes[:, 0] > width + tolerance)
    outside |= (boxes[:, 3] < -tolerance) | (boxes[:, 1] > height + tolerance)
    if outside.any():
        index = int(outside.nonzero()[0, 0])
        box = [float(v) for v in boxes[index]]
        raise ValueError(
            f"box[{index}] = {box} is outside the {frame} of size W x H = {width} x {height}: "
            f"a box must overlap [0, {width}] x [0, {height}]"
        )


def check_boxes_fit(transformed: torch.Tensor, boxes: torch.Tensor) -> None:
    """Raises ValueError if a box partly outside the image is so large that its corners
    overflow float32 in the input frame (the model would answer NaN scores)."""
    overflow = ~torch.isfinite(transformed).all(dim=1)
    if overflow.any():
        index = int(overflow.nonzero()[0, 0])
        box = [float(v) for v in boxes[index]]
        raise ValueError(f"box[{index}] = {box} is too large: its corners overflow float32")


def check_mask_input(mask_input: torch.Tensor, expected: tuple[int, ...], hint: str) -> None:
    """Checks that ``mask_input`` has shape ``expected`` and finite values."""
    if tuple(mask_input.shape) != expected:
        raise ValueError(
            f"mask_input must have shape {expected}, got {tuple(mask_input.shape)}; {hint}"
        )
    _check_finite(mask_input, "mask_input")


def check_batch_sizes(**sizes: int | None) -> int:
    """Returns the common batch size of the given prompts (1 when none is given)."""
    given = {name: size for name, size in sizes.items() if size is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"prompt batch sizes differ: {given}")
    return next(iter(given.values()), 1)
