"""Validation prompts and metrics of training: mIoU after one point, after one box and
after N corrective clicks (SAM paper App. D.1, the protocol of RITM), measured in the padded
input frame of the batch, and the example panels logged with them.

The click protocol and the mask IoU are those of the point-prompt harness
(:mod:`sam_lightning.evaluation.points`), from :mod:`sam_lightning.inference.clicks`, so that
``val/miou_<k>clicks`` and the harness's ``miou_<k>pt`` are the same on the same masks. IoUs
are returned as float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.inference.clicks import click_session, interior_points, mask_iou
from sam_lightning.modeling.sam import Sam
from sam_lightning.training.overlays import validation_panels
from sam_lightning.training.prompts import mask_boxes


def _iou(pred: Tensor, gt: Tensor) -> Tensor:
    """:func:`~sam_lightning.inference.clicks.mask_iou` as float32."""
    return mask_iou(pred, gt).float()


def _masks(model: Sam, logits: Tensor, size: torch.Size) -> Tensor:
    """Binary masks of ``P×K×h×w`` low-resolution logits upsampled to ``size``."""
    upsampled = F.interpolate(logits, size, mode="bilinear", align_corners=False)
    return upsampled > model.mask_threshold


def _threshold(model: Sam, logits: Tensor, size: torch.Size) -> Tensor:
    """Binary masks of ``P×1×h×w`` low-resolution logits upsampled to ``size``."""
    return _masks(model, logits, size)[:, 0]


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
    return {
        name: _iou(best_masks(model, embeddings, image_index, size, **prompt), gt_masks)
        for name, prompt in prompts.items()
    }


@torch.no_grad()
def best_masks(
    model: Sam, embeddings: Tensor, image_index: Tensor, size: torch.Size, **prompt: Tensor
) -> Tensor:
    """``P×size`` bool: for each of ``P`` prompts (``model.decode`` keywords), the most
    confident of its 3 masks, upsampled to ``size`` (the padded input frame) and
    thresholded."""
    low_res, scores = model.decode(
        embeddings, multimask_output=True, image_index=image_index, **prompt
    )
    return _threshold(model, _most_confident(low_res, scores), size)


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
    """IoU after each of ``num_clicks`` simulated clicks (SAM App. D.1, RITM's protocol):
    :func:`~sam_lightning.inference.clicks.click_session` in the padded input frame, the
    kept low-resolution logits upsampled to it and thresholded. Click 1 gives the ``1pt`` of
    :func:`single_prompt_ious`; all masks are decoded in one call per round.

    Args:
        model: the SAM whose prompt encoder and mask decoder are run.
        embeddings: ``B×C×h×w`` image embeddings.
        gt_masks: ``P×S×S`` bool masks in the padded input frame.
        image_index: ``P`` long, the embedding of each mask.
        num_clicks: clicks per mask, at least 1.

    Returns:
        ``P×num_clicks`` float32 IoUs, column ``i`` after click ``i + 1``.
    """
    size = gt_masks.shape[-2:]

    def decode(coords: Tensor, labels: Tensor, mask_inputs: Tensor | None, rows: Tensor):
        prompt = {} if mask_inputs is None else {"mask_inputs": mask_inputs}
        return model.decode(
            embeddings,
            point_coords=coords,
            point_labels=labels,
            multimask_output=mask_inputs is None,
            image_index=image_index[rows],
            **prompt,
        )

    def to_masks(logits: Tensor) -> Tensor:
        return _masks(model, logits, size)

    return click_session(decode, to_masks, gt_masks, num_clicks).ious.float()


@torch.no_grad()
def example_panels(
    model: Sam, batch: dict[str, Any], embeddings: Tensor, count: int
) -> list[np.ndarray]:
    """Ground truth beside the 1-point prediction (the click at the most interior pixel
    drawn) for the first ``count`` images of a validation batch, as images to log."""
    chosen = batch["image_index"] < count
    masks, image_index = batch["masks"][chosen], batch["image_index"][chosen]
    points = interior_points(masks)
    low_res, scores = model.decode(
        embeddings,
        point_coords=points[:, None].float(),
        point_labels=torch.ones(len(masks), 1, dtype=torch.int, device=masks.device),
        multimask_output=True,
        image_index=image_index,
    )
    best = low_res[torch.arange(len(low_res)), scores.argmax(1), None]
    upscaled = F.interpolate(best, masks.shape[-2:], mode="bilinear")
    predicted = upscaled[:, 0] > model.mask_threshold
    panels = []
    for i in range(count):
        height, width = batch["input_size"][i].tolist()
        mine = image_index == i
        clicks = [(x, y, 1) for x, y in points[mine].tolist()]
        panels.append(
            validation_panels(
                batch["images"][i][:, :height, :width],
                masks[mine][:, :height, :width],
                predicted[mine][:, :height, :width],
                points=clicks,
            )
        )
    return panels
