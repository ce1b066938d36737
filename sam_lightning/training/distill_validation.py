"""Validation of encoder distillation: how close the student's masks come to the teacher's.

Both embeddings go through the same (the teacher's) prompt encoder and mask decoder with the
same prompts; for each prompt the most confident of the 3 masks of each is kept (what a user
sees), and the IoU of the two is the prompt's student/teacher IoU (1 when both are empty).

Prompts. When the batch has ground-truth masks: one point at the most interior pixel of
each mask and its tight box, as ``val/miou_1pt`` and ``val/miou_box`` use them. A plain
folder of images has no masks: the prompts are then the centres of a ``grid × grid`` grid
over each image's unpadded part (1-point prompts) and the tight boxes of the teacher's masks
for those points (box prompts; points whose teacher mask is empty give no box).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sam_lightning.inference.clicks import interior_points, mask_iou
from sam_lightning.modeling.sam import Sam
from sam_lightning.training.prompts import mask_boxes
from sam_lightning.training.validation import best_masks


def grid_prompts(input_sizes: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """``(P×2 float (x, y) points, P image indices)``: the centres of a ``grid × grid``
    grid over each ``(h, w)`` of ``input_sizes`` (``B×2``), ``P = B grid²``."""
    if grid < 1:
        raise ValueError(f"the validation grid needs at least 1 point per side, got {grid}")
    steps = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    unit = torch.stack([xs.flatten(), ys.flatten()], 1)  # G²×2 in [0, 1]
    sizes = input_sizes.float().cpu()
    points = torch.cat([unit * sizes[i].flip(0) for i in range(len(sizes))])
    index = torch.arange(len(sizes)).repeat_interleave(grid * grid)
    return points.floor().to(input_sizes.device), index.to(input_sizes.device)


def distill_prompts(
    model: Sam, batch: dict[str, Any], teacher: Tensor, grid: int
) -> dict[str, tuple[dict[str, Tensor], Tensor]]:
    """The validation prompts of a batch (see the module docstring): ``{"1pt": (decode
    keywords, image_index), "box": (...)}``."""
    masks, size = batch["masks"], batch["images"].shape[-2:]
    if len(masks):
        index = batch["image_index"]
        points = interior_points(masks)[:, None].float()
        boxes = mask_boxes(masks).float()
    else:
        flat, index = grid_prompts(batch["input_size"], grid)
        points = flat[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
        seen = best_masks(model, teacher, index, size, point_coords=points, point_labels=labels)
        keep = seen.flatten(1).any(1)
        boxes, box_index = mask_boxes(seen[keep]).float(), index[keep]
    labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
    return {
        "1pt": ({"point_coords": points, "point_labels": labels}, index),
        "box": ({"boxes": boxes}, index if len(masks) else box_index),
    }


@torch.no_grad()
def student_teacher_ious(
    model: Sam,
    student: Tensor,
    teacher: Tensor,
    prompts: dict[str, tuple[dict[str, Tensor], Tensor]],
    size: torch.Size,
) -> dict[str, Tensor]:
    """Per prompt kind, the float32 IoUs between the student's and the teacher's most
    confident masks for the same prompts, decoded by ``model``'s (the teacher's) prompt
    encoder and mask decoder, in the padded input frame of side ``size``."""
    ious = {}
    for name, (prompt, index) in prompts.items():
        if len(index) == 0:
            continue
        mine = best_masks(model, student, index, size, **prompt)
        theirs = best_masks(model, teacher, index, size, **prompt)
        ious[name] = mask_iou(mine, theirs).float()
    return ious
