"""Validation prompts and metrics of training: mIoU after one point, after one box and
after N corrective clicks (SAM paper App. D.1, the protocol of RITM).

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.modeling.prompt_encoder import NEGATIVE, NOT_A_POINT, POSITIVE
from sam_lightning.modeling.sam import Sam
from sam_lightning.training.prompts import mask_boxes

#: Elements of the ``candidates × window`` tensors of one exact-depth chunk.
_CHUNK_ELEMENTS = 1 << 22


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


def _iou(pred: Tensor, gt: Tensor) -> Tensor:
    intersection = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def _threshold(model: Sam, logits: Tensor, size: torch.Size) -> Tensor:
    """Binary masks of ``P×1×h×w`` low-resolution logits upsampled to ``size``."""
    upsampled = F.interpolate(logits, size, mode="bilinear", align_corners=False)
    return upsampled[:, 0] > model.mask_threshold


def _most_confident(low_res: Tensor, scores: Tensor) -> Tensor:
    """``P×1×h×w`` logits of the mask with the highest predicted IoU."""
    return low_res[torch.arange(len(low_res), device=low_res.device), scores.argmax(1), None]


@torch.no_grad()
def single_prompt_ious(
    model: Sam, embeddings: Tensor, gt_masks: Tensor, image_index: Tensor
) -> dict[str, Tensor]:
    """IoU of the most confident of the 3 masks after one point at the most interior pixel
    (:func:`interior_points`, ``1pt``) and after the tight box (``box``), for ``P×S×S``
    masks in the padded input frame."""
    size = gt_masks.shape[-2:]
    prompts = {
        "1pt": {
            "point_coords": interior_points(gt_masks)[:, None].float(),
            "point_labels": torch.ones(len(gt_masks), 1, dtype=torch.int, device=gt_masks.device),
        },
        "box": {"boxes": mask_boxes(gt_masks).float()},
    }
    ious = {}
    for name, prompt in prompts.items():
        low_res, scores = model.decode(
            embeddings, multimask_output=True, image_index=image_index, **prompt
        )
        ious[name] = _iou(_threshold(model, _most_confident(low_res, scores), size), gt_masks)
    return ious


@torch.no_grad()
def text_prompt_ious(
    model: Sam, embeddings: Tensor, gt_masks: Tensor, image_index: Tensor, text: Tensor
) -> Tensor:
    """IoU of the most confident of the 3 masks for ``P×D`` CLIP embeddings alone (App.
    D.5), for ``P×S×S`` masks in the padded input frame."""
    low_res, scores = model.decode(
        embeddings, multimask_output=True, image_index=image_index, text_embeddings=text
    )
    return _iou(_threshold(model, _most_confident(low_res, scores), gt_masks.shape[-2:]), gt_masks)


@torch.no_grad()
def corrective_click_ious(
    model: Sam, embeddings: Tensor, gt_masks: Tensor, image_index: Tensor, num_clicks: int
) -> Tensor:
    """IoU after each of ``num_clicks`` simulated clicks (SAM App. D.1, RITM's protocol).

    Click 1 is positive, at the most interior pixel of the mask; the most confident of the
    3 masks is kept (as the ``1pt`` of :func:`single_prompt_ious`). Each later click is
    :func:`corrective_clicks` of the previous prediction (the kept low-resolution logits
    upsampled to the frame, thresholded); the decoder then gets all clicks so far and, as
    ``mask_inputs``, the previous round's logits, and gives a single mask, as in the
    training session. All masks are decoded in one call per round; a mask without an error
    pixel left to click gets no more clicks and keeps its IoU.

    Args:
        model: the SAM whose prompt encoder and mask decoder are run.
        embeddings: ``B×C×h×w`` image embeddings.
        gt_masks: ``P×S×S`` bool masks in the padded input frame.
        image_index: ``P`` long, the embedding of each mask.
        num_clicks: clicks per mask, at least 1.

    Returns:
        ``P×num_clicks`` IoUs, column ``i`` after click ``i + 1``.
    """
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be at least 1, got {num_clicks}")
    gt = gt_masks.bool()
    size, device = gt.shape[-2:], gt.device
    points = interior_points(gt)
    coords = points[:, None].float()
    labels = torch.full((len(gt), 1), POSITIVE, device=device)
    low_res, scores = model.decode(
        embeddings,
        point_coords=coords,
        point_labels=labels,
        multimask_output=True,
        image_index=image_index,
    )
    mask_inputs = _most_confident(low_res, scores)
    pred = _threshold(model, mask_inputs, size)
    clicked = torch.zeros_like(gt)
    clicked[torch.arange(len(gt), device=device), points[:, 1], points[:, 0]] = True
    ious = [_iou(pred, gt)]
    for _ in range(1, num_clicks):
        points = torch.zeros_like(points)
        new_labels = torch.full_like(labels[:, 0], NOT_A_POINT)
        wrong = torch.nonzero((pred ^ gt).flatten(1).any(1))[:, 0]
        if len(wrong):
            points[wrong], new_labels[wrong] = corrective_clicks(
                pred[wrong], gt[wrong], clicked[wrong]
            )
        coords = torch.cat([coords, points[:, None].float()], dim=1)
        labels = torch.cat([labels, new_labels[:, None]], dim=1)
        active = torch.nonzero(new_labels != NOT_A_POINT)[:, 0]
        if len(active):
            clicked[active, points[active, 1], points[active, 0]] = True
            low_res, _ = model.decode(
                embeddings,
                point_coords=coords[active],
                point_labels=labels[active],
                mask_inputs=mask_inputs[active],
                multimask_output=False,
                image_index=image_index[active],
            )
            mask_inputs[active] = low_res
            pred[active] = _threshold(model, low_res, size)
        ious.append(_iou(pred, gt))
    return torch.stack(ious, dim=1)
