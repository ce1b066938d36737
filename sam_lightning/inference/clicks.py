"""The corrective-click protocol of RITM and SAM (paper App. D.1) and the mask IoU, shared by
the training validation (:mod:`sam_lightning.training.validation`: ``val/miou_1pt``,
``val/miou_<k>clicks``) and the point-prompt harness (:mod:`sam_lightning.evaluation.points`),
so that both report the same numbers on the same predictions.

Clicks go to the pixel of a region farthest from its boundary: the maximum of the exact
Euclidean distance transform, the distance to the nearest pixel outside the region, pixels
beyond the frame counting as outside (the frame is padded by one background pixel); ties go
to the first pixel in raster order. :func:`deepest_points` finds that maximum without
building the whole transform: the distances along a pixel's row and along its column bound
its depth from above, and the exact depth (the separable form of the transform, the second
pass of Felzenszwalb and Huttenlocher: the minimum over the pixel's column of squared row
distance plus squared row offset) is computed only where that bound reaches the deepest
depth found so far. The work is a few passes over the pixels plus, per candidate, a window
as long as its depth: small for compact regions, more for wide regions at 45° (whose row
and column distances exceed the depth). Everything runs batched on the masks' device.

:func:`click_session` runs the whole protocol: click 1 is positive, at the most interior
pixel of the mask (:func:`interior_points`), and the most confident of the 3 masks is kept;
each later click is :func:`corrective_clicks` of the previous prediction, and the decoder gets
every click so far and, as ``mask_inputs``, the previous round's kept low-resolution logits,
and gives a single mask. A mask without an error pixel left to click gets no more clicks and
keeps its IoU. The caller says how the model is run and in which frame masks are compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.modeling.prompt_encoder import NEGATIVE, NOT_A_POINT, POSITIVE

#: Elements of the ``candidates × window`` tensors of one exact-depth chunk.
_CHUNK_ELEMENTS = 1 << 22

#: ``decode(coords, labels, mask_inputs, rows) -> (low_res, scores)`` of :func:`click_session`.
Decode = Callable[[Tensor, Tensor, Tensor | None, Tensor], tuple[Tensor, Tensor]]


def mask_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of bool masks ``...×H×W`` (broadcast against each other), float64 (the exact
    ratio rounded once; a caller that keeps float32 rounds that), 1 where both are empty."""
    intersection = (pred & gt).flatten(-2).sum(-1)
    union = (pred | gt).flatten(-2).sum(-1)
    return torch.where(union > 0, intersection.double() / union.clamp(min=1), 1.0)


def _line_distances(masks: Tensor) -> Tensor:
    """Distance along the last axis from each pixel of ``...×W`` bool masks to the nearest
    pixel outside (0 outside; beyond the ends counts as outside)."""
    w = masks.shape[-1]
    dtype = torch.int16 if w < 2**15 - 1 else torch.int32
    index = torch.arange(w, device=masks.device, dtype=dtype)
    before = torch.where(masks, -1, index).cummax(-1).values
    after = torch.where(masks.flip(-1), -1, index).cummax(-1).values.flip(-1)
    return torch.minimum(index - before, (w - 1 - after) - index)


def _exact_depths(row_distances: Tensor, m: Tensor, y: Tensor, x: Tensor, radius: Tensor) -> Tensor:
    """Squared Euclidean depth of pixels ``(m, y, x)``: the minimum over rows ``y + d`` of
    ``row_distance² + d²``, for ``|d|`` up to ``radius`` (an upper bound of the depth).
    ``row_distances`` is ``P×(H+2)×W``, padded with a zero row above and below."""
    r = int(radius.max()) if len(radius) else 0
    offsets = torch.arange(-r, r + 1, device=row_distances.device)
    # Beyond the pixel's radius the rows are clamped to the frame: never below the minimum.
    rows = (y[:, None] + offsets).clamp(-1, row_distances.shape[1] - 2) + 1
    gathered = row_distances[m[:, None], rows, x[:, None]].long()
    return (gathered.square() + offsets.square()).amin(1)


def deepest_points(regions: Tensor, excluded: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The pixel of each region farthest from its boundary: the maximum of the exact
    Euclidean distance transform (see the module docstring), first in raster order.

    Args:
        regions: ``P×H×W`` bool regions.
        excluded: ``P×H×W`` bool pixels that may not be chosen (they still belong to the
            region for the distances), e.g. pixels already clicked.

    Returns:
        ``P×2`` long ``(x, y)`` and ``P`` long squared depths; ``(0, 0)`` and 0 where no
        pixel of the region may be chosen.
    """
    p, h, w = regions.shape
    rows = _line_distances(regions)
    bound = torch.minimum(rows, _line_distances(regions.transpose(1, 2).contiguous()).mT)
    if excluded is not None:
        bound = bound.masked_fill(excluded, 0)
    row_distances = F.pad(rows, (0, 0, 1, 1))
    # A first lower bound of the maximum: the depth where the upper bound is largest.
    top, first = bound.flatten(1).max(1)
    masks = torch.arange(p, device=regions.device)
    depth = _exact_depths(row_distances, masks, first // w, first % w, top)
    best = torch.where(top > 0, depth, 0)
    needed = best.double().sqrt().ceil().to(bound.dtype)  # bound² ≥ best
    m, y, x = torch.nonzero((bound >= needed[:, None, None]) & (bound > 0), as_tuple=True)
    radius, order = bound[m, y, x].sort(descending=True)
    m, y, x = m[order], y[order], x[order]
    # Exact depths of the candidates, largest bound first, pruning as the maximum grows.
    found, start = [], 0
    while start < len(m):
        stop = start + max(1, _CHUNK_ELEMENTS // (2 * int(radius[start]) + 1))
        keep = radius[start:stop].long().square() >= best[m[start:stop]]
        cm, cy, cx = m[start:stop][keep], y[start:stop][keep], x[start:stop][keep]
        depth = _exact_depths(row_distances, cm, cy, cx, radius[start:stop][keep])
        best = best.scatter_reduce(0, cm, depth, "amax")
        found.append((cm, cy * w + cx, depth))
        start = stop
    flat = torch.zeros(p, dtype=torch.long, device=regions.device)
    if found:
        cm, index, depth = (torch.cat(parts) for parts in zip(*found))
        deepest = depth == best[cm]
        flat = flat.fill_(h * w).scatter_reduce(0, cm[deepest], index[deepest], "amin")
        flat = torch.where(best > 0, flat, 0)
    return torch.stack([flat % w, flat // w], dim=1), best


def interior_points(masks: Tensor) -> Tensor:
    """``P×2`` long ``(x, y)`` of the most interior pixel of each ``P×H×W`` bool mask (see
    :func:`deepest_points`); ``(0, 0)`` for empty masks."""
    return deepest_points(masks.bool())[0]


def corrective_clicks(
    pred: Tensor, gt: Tensor, clicked: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The next click of the evaluation protocol of RITM and SAM, per mask.

    The false negatives ``gt & ~pred`` and the false positives ``~gt & pred`` are two
    regions (each taken whole, not per connected component); the click goes to the deepest
    pixel (:func:`deepest_points`) of the deeper one: a positive click in the false
    negatives, a negative click in the false positives. Equal depths give the negative
    click, as RITM's ``fn_max_dist > fp_max_dist``. As in RITM, pixels already clicked are
    not chosen again (they stay in the regions for the distances).

    Args:
        pred, gt: ``P×H×W`` bool predicted and ground-truth masks.
        clicked: ``P×H×W`` bool pixels clicked before.

    Returns:
        ``P×2`` long ``(x, y)`` and ``P`` long labels: 1, 0, or -1 (point ``(0, 0)``) where
        no error pixel is left to click.
    """
    p = len(gt)
    excluded = None if clicked is None else clicked.repeat(2, 1, 1)
    points, depth = deepest_points(torch.cat([gt & ~pred, ~gt & pred]), excluded)
    positive = depth[:p] > depth[p:]
    labels = torch.where(positive, POSITIVE, NEGATIVE)
    labels = torch.where(torch.maximum(depth[:p], depth[p:]) > 0, labels, NOT_A_POINT)
    points = torch.where(positive[:, None], points[:p], points[p:])
    return points, labels


@dataclass
class Clicks:
    """The clicks of :func:`click_session` on ``P`` masks and what they gave.

    Attributes:
        ious: ``P×N`` float64 :func:`mask_iou` after each of N clicks.
        clicks: ``P×N×2`` long ``(x, y)`` pixels of the masks' frame.
        labels: ``P×N`` long: 1 positive, 0 negative, -1 no click (nothing left to correct).
        first_scores: ``P`` predicted IoU of the mask kept after click 1 (the most confident).
        first_masks: ``P×H×W`` bool that mask, with ``keep_first`` (else None).
        first_ious: ``P×K`` float64 IoU of each of the K masks after click 1 (the best is the
            oracle of SAM §7.1), with ``keep_first`` (else None).
    """

    ious: Tensor
    clicks: Tensor
    labels: Tensor
    first_scores: Tensor
    first_masks: Tensor | None = None
    first_ious: Tensor | None = None


def click_session(
    decode: Decode,
    to_masks: Callable[[Tensor], Tensor],
    gt_masks: Tensor,
    num_clicks: int,
    keep_first: bool = False,
) -> Clicks:
    """Runs the click protocol (module docstring) on ``P`` ground-truth masks: one batched
    decoder call per click, for the masks that got a click. Run it under ``no_grad``.

    Args:
        decode: ``decode(coords, labels, mask_inputs, rows)`` runs the prompt encoder and
            mask decoder on masks ``rows`` (``P'`` long indices into ``gt_masks``) with
            ``P'×n×2`` float ``coords`` in the masks' frame, ``P'×n`` long ``labels`` and
            ``P'×1×h×w`` low-resolution ``mask_inputs``; None means click 1, which asks
            for the 3 masks (``multimask_output``), later clicks for one. Returns the
            ``P'×K×h×w`` low-resolution logits and ``P'×K`` predicted IoUs.
        to_masks: ``B×K×h×w`` low-resolution logits to ``B×K×H×W`` bool masks in the frame
            of ``gt_masks`` (upsampled, thresholded).
        gt_masks: ``P×H×W`` bool ground-truth masks.
        num_clicks: clicks per mask, at least 1.
        keep_first: also keep the first kept masks and the IoUs of all K first masks.
    """
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be at least 1, got {num_clicks}")
    gt = gt_masks.bool()
    rows = torch.arange(len(gt), device=gt.device)
    points = interior_points(gt)
    clicks = points[:, None]
    labels = torch.full((len(gt), 1), POSITIVE, device=gt.device)
    low_res, scores = decode(clicks.float(), labels, None, rows)
    best = scores.argmax(1)
    mask_inputs = low_res[rows, best, None]
    first_masks = first_ious = None
    if keep_first:
        masks = to_masks(low_res)
        first_ious = mask_iou(masks, gt[:, None])
        pred = masks[rows, best]
        first_masks = pred.clone()
    else:
        pred = to_masks(mask_inputs)[:, 0]
    clicked = torch.zeros_like(gt)
    clicked[rows, points[:, 1], points[:, 0]] = True
    ious = [mask_iou(pred, gt)]
    for _ in range(1, num_clicks):
        points = torch.zeros_like(points)
        new_labels = torch.full_like(labels[:, 0], NOT_A_POINT)
        wrong = torch.nonzero((pred ^ gt).flatten(1).any(1))[:, 0]
        if len(wrong):
            points[wrong], new_labels[wrong] = corrective_clicks(
                pred[wrong], gt[wrong], clicked[wrong]
            )
        clicks = torch.cat([clicks, points[:, None]], dim=1)
        labels = torch.cat([labels, new_labels[:, None]], dim=1)
        active = torch.nonzero(new_labels != NOT_A_POINT)[:, 0]
        if len(active):
            clicked[active, points[active, 1], points[active, 0]] = True
            low_res, _ = decode(clicks[active].float(), labels[active], mask_inputs[active], active)
            mask_inputs[active] = low_res
            pred[active] = to_masks(low_res)[:, 0]
        ious.append(mask_iou(pred, gt))
    return Clicks(
        ious=torch.stack(ious, dim=1),
        clicks=clicks,
        labels=labels,
        first_scores=scores[rows, best],
        first_masks=first_masks,
        first_ious=first_ious,
    )
