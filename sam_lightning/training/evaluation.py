"""Validation prompts and metrics of training: mIoU after one point and after one box.

The single point is the mask's most interior pixel, the maximum of a distance transform
(chessboard distance, computed by repeated 3×3 erosion on a grid of at most
``MAX_GRID`` cells per side and mapped back to the centre of the deepest cell). Evaluation
harnesses (issue 5) use an exact Euclidean transform; this one only has to be cheap and
deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.modeling.sam import Sam
from sam_lightning.training.prompts import mask_boxes

MAX_GRID = 256


def interior_points(masks: Tensor) -> Tensor:
    """``P×2`` long ``(x, y)`` of a deepest pixel of each ``P×H×W`` bool mask (ties: the
    first in raster order); ``(0, 0)`` for empty masks."""
    p, h, w = masks.shape
    factor = max(1, -(-max(h, w) // MAX_GRID))
    grid = masks[:, None].float()
    if factor > 1:  # a coarse cell is inside when all its pixels are
        pad = (0, -w % factor, 0, -h % factor)
        grid = -F.max_pool2d(-F.pad(grid, pad), factor)
        if not grid.flatten(1).any(1).all():  # masks smaller than a cell: full resolution
            factor, grid = 1, masks[:, None].float()
    depth = torch.zeros_like(grid)
    current = grid
    while current.any():
        depth += current
        current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), 3, stride=1)
    flat = depth.flatten(1).argmax(1)
    columns = grid.shape[-1]
    ys, xs = flat // columns, flat % columns
    centre = factor // 2
    points = torch.stack([xs * factor + centre, ys * factor + centre], dim=1)
    points[:, 0].clamp_(max=w - 1)
    points[:, 1].clamp_(max=h - 1)
    return points


def _iou(pred: Tensor, gt: Tensor) -> Tensor:
    intersection = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def single_prompt_ious(
    model: Sam, embeddings: Tensor, gt_masks: Tensor, image_index: Tensor
) -> dict[str, Tensor]:
    """IoU of the most confident of the 3 masks after one interior point (``1pt``) and
    after the tight box (``box``), for ``P×S×S`` masks in the padded input frame."""
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
        best = low_res[torch.arange(len(low_res)), scores.argmax(1)]
        logits = F.interpolate(best[:, None], size, mode="bilinear", align_corners=False)[:, 0]
        ious[name] = _iou(logits > model.mask_threshold, gt_masks)
    return ious
