"""Prompt simulation of SAM training (paper App. A, "Training algorithm"): first prompts
(a foreground point or a noisy box), corrective points from the error region, and the
11-round schedule.

Points are integer pixel coordinates of the masks' frame: ``(x, y)`` is the pixel of column
``x`` and row ``y``, the convention of the official predictor and of
:class:`~sam_lightning.modeling.prompt_encoder.PromptEncoder`, which adds the 0.5 to reach
the pixel centre itself. Boxes are ``(x0, y0, x1, y1)`` in the same convention: ``x1`` is
the last column of the mask, not one past it.

Random numbers come from ``generator`` (on any device; they are drawn there and moved to
the masks' device), so a seeded generator makes the simulation reproducible.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sam_lightning.modeling.prompt_encoder import NEGATIVE, NOT_A_POINT, POSITIVE


def _rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    normal: bool = False,
) -> Tensor:
    """Uniform ``[0, 1)`` (or standard normal) numbers drawn on the generator's device."""
    source = generator.device if generator is not None else device
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=generator, device=source, dtype=dtype).to(device)


def sample_points(
    region_phw: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Samples one pixel uniformly from each of P regions.

    Args:
        region_phw: ``P×H×W`` boolean regions.
        generator: source of randomness.

    Returns:
        ``P×2`` float ``(x, y)`` pixel coordinates and ``P`` boolean ``valid``, False where a
        region is empty (its point is then ``(0, 0)``).
    """
    p, h, w = region_phw.shape
    cumulative = region_phw.reshape(p, h * w).cumsum(dim=1, dtype=torch.int32)
    counts = cumulative[:, -1] if h * w else cumulative.new_zeros(p)
    # k-th region pixel (k uniform in [0, count)) = first index whose running count > k.
    # float64 keeps u·count uniform over the integers up to millions of pixels.
    u = _rand((p,), generator, region_phw.device, torch.float64)
    k = (u * counts).floor().to(torch.int32).clamp(max=counts - 1).clamp(min=0)
    flat = torch.searchsorted(cumulative, k[:, None], right=True)[:, 0].clamp(max=h * w - 1)
    valid = counts > 0
    flat = torch.where(valid, flat, 0)
    points = torch.stack([flat % w, flat // w], dim=1).to(torch.float32)
    return points, valid


def mask_boxes(masks_phw: Tensor) -> Tensor:
    """Tight ``P×4`` float ``(x0, y0, x1, y1)`` boxes of P boolean masks (last row/column
    inclusive); zeros for empty masks."""
    p, h, w = masks_phw.shape
    rows, cols = masks_phw.any(dim=2), masks_phw.any(dim=1)

    def first_last(occupied: Tensor, size: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(size, device=occupied.device)
        first = torch.where(occupied, index, size).amin(dim=1)
        last = torch.where(occupied, index, -1).amax(dim=1)
        empty = last < 0
        return torch.where(empty, 0, first), torch.where(empty, 0, last)

    y0, y1 = first_last(rows, h)
    x0, x1 = first_last(cols, w)
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)


def jitter_boxes(
    masks_phw: Tensor,
    generator: torch.Generator | None = None,
    noise: float = 0.1,
    max_noise: float = 20.0,
) -> Tensor:
    """Noisy boxes around P boolean masks (App. A: "random noise ... with a standard
    deviation equal to 10% of the box sidelength, to a maximum of 20 pixels").

    Each coordinate of the tight box moves by Gaussian noise with ``σ = noise × side``
    (the width ``x1 - x0`` for x, the height for y), clipped to ``±max_noise`` pixels; the
    box is then clipped to the image and its corners reordered if they crossed.

    Returns:
        ``P×4`` float ``(x0, y0, x1, y1)``; empty masks get their zero box, unjittered.
    """
    p, h, w = masks_phw.shape
    boxes = mask_boxes(masks_phw)
    side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # width, height, width, height
    offsets = _rand((p, 4), generator, boxes.device, normal=True) * noise * side
    boxes = boxes + offsets.clamp(-max_noise, max_noise)
    upper = boxes.new_tensor([w - 1, h - 1, w - 1, h - 1])
    boxes = torch.minimum(boxes.clamp(min=0), upper)
    low, high = torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])
    return torch.cat([low, high], dim=1)


class FirstPrompts(NamedTuple):
    """First prompts of P masks: ``use_box`` (``P`` bool) selects, per mask, the box
    (``boxes``, ``P×4``) or the point (``point_coords`` ``P×1×2`` with ``point_labels``
    ``P×1``: 1, or -1 where the mask is empty). Both are filled for every mask."""

    point_coords: Tensor
    point_labels: Tensor
    boxes: Tensor
    use_box: Tensor


def first_prompts(
    masks_phw: Tensor,
    generator: torch.Generator | None = None,
    box_probability: float = 0.5,
    box_noise: float = 0.1,
    box_max_noise: float = 20.0,
) -> FirstPrompts:
    """The first prompt of each of P masks (App. A): "with equal probability either a
    foreground point or bounding box", the point uniform in the mask, the box jittered by
    :func:`jitter_boxes`."""
    points, valid = sample_points(masks_phw, generator)
    boxes = jitter_boxes(masks_phw, generator, box_noise, box_max_noise)
    use_box = _rand((len(masks_phw),), generator, masks_phw.device) < box_probability
    labels = torch.where(valid, POSITIVE, NOT_A_POINT)
    return FirstPrompts(points[:, None], labels[:, None], boxes, use_box)


def corrective_points(
    pred_phw: Tensor, gt_phw: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One corrective click per mask, uniform in the error region of the prediction
    (App. A): a false-negative pixel gets label 1, a false-positive pixel label 0.

    Where the prediction is already perfect, the click is a positive point sampled from
    the ground truth (a no-op for the user's intent, and the decoder still sees a point
    per round, so that every prompt of a batch has the same number of points); where the
    ground truth is empty as well, label -1 (padding).

    Args:
        pred_phw, gt_phw: ``P×H×W`` boolean predicted and ground-truth masks.
        generator: source of randomness.

    Returns:
        ``P×2`` float ``(x, y)`` points and ``P`` long labels.
    """
    pred_phw, gt_phw = pred_phw.bool(), gt_phw.bool()
    error = pred_phw ^ gt_phw
    has_error = error.flatten(1).any(dim=1)
    region = torch.where(has_error[:, None, None], error, gt_phw)
    points, valid = sample_points(region, generator)
    x, y = points.long().unbind(dim=1)
    is_gt = gt_phw[torch.arange(len(gt_phw), device=gt_phw.device), y, x]
    labels = torch.where(is_gt, POSITIVE, NEGATIVE)
    return points, torch.where(valid, labels, NOT_A_POINT)


def num_rounds(num_point_rounds: int = 8) -> int:
    """Rounds of one simulated interaction: the first prompt, ``num_point_rounds`` rounds
    adding a corrective point and 2 rounds without a new point (11 in the paper)."""
    if num_point_rounds < 1:
        raise ValueError(f"num_point_rounds must be at least 1, got {num_point_rounds}")
    return num_point_rounds + 3


def round_schedule(
    num_point_rounds: int = 8, generator: torch.Generator | None = None
) -> list[bool]:
    """Which rounds add a new prompt (True) or only feed back the previous mask (False).

    App. A: after the first prompt, ``num_point_rounds`` (8) corrective points; of the 2
    rounds without new information, "one is randomly inserted among the 8 iteratively
    sampled points, and the other is always at the end". The inserted round precedes
    corrective round ``k``, ``k`` uniform in ``[0, num_point_rounds)``: it may follow the
    first prompt directly, and it always has a corrective point after it.

    Returns:
        ``num_rounds(num_point_rounds)`` booleans; the first is the first prompt.
    """
    if num_point_rounds < 1:
        raise ValueError(f"num_point_rounds must be at least 1, got {num_point_rounds}")
    device = generator.device if generator is not None else torch.device("cpu")
    slot = int(torch.randint(num_point_rounds, (), generator=generator, device=device))
    corrective = [True] * num_point_rounds
    corrective.insert(slot, False)
    return [True, *corrective, False]
