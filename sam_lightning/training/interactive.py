"""Simulated interactive segmentation, the training loop of SAM (paper §3 and App. A):
a first prompt, corrective clicks from the error region and mask feedback over 11 rounds,
with the loss of every round."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.modeling.sam import Sam
from sam_lightning.training.losses import mask_iou, sam_loss
from sam_lightning.training.prompts import corrective_points, first_prompts, round_schedule


def simulate_interactive(
    model: Sam,
    embeddings: Tensor,
    gt_masks: Tensor,
    image_index: Tensor,
    generator: torch.Generator | None = None,
    num_point_rounds: int = 8,
    box_probability: float = 0.5,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    box_noise: float = 0.1,
    box_max_noise: float = 20.0,
    schedule: Sequence[bool] | None = None,
    text_embeddings: Tensor | None = None,
    use_text: Tensor | None = None,
) -> dict[str, Tensor | list[bool]]:
    """Simulates an interactive session for P masks and returns the training loss.

    Round 1 prompts each mask with a foreground point or a jittered box (equal odds) and
    takes the K = 3 ambiguity masks. Each later round feeds back, as ``mask_inputs``, the
    previous round's low-resolution logits of the mask with the highest predicted IoU
    (detached), and, where the schedule says so, adds a corrective point sampled from the
    error between that mask (upsampled bilinearly to the input frame, thresholded at 0)
    and the ground truth; points accumulate. Once a corrective point is present (box or
    point plus point: more than one prompt) the decoder gives its single mask (K = 1).
    Point prompts and box prompts are decoded in two calls, so that each has exactly the
    token structure of inference (no padding token stands in for a missing box).

    With ``use_text``, the chosen masks are first prompted instead with a CLIP embedding
    (App. D.5: in training the CLIP *image* embedding of the mask's region, at inference
    the text's), and their corrective points follow that token in the later rounds.

    Every round gets :func:`~sam_lightning.training.losses.sam_loss` against the ground
    truth reduced to the low-resolution logits' grid (``4h×4w``, 256² for SAM) by area
    averaging, a pixel being foreground when more than half of its block is: far cheaper
    than upsampling every round's logits to the input frame, and exact block coverage
    rather than bilinear sampling of the block's centre. No gradient flows between rounds
    (prompts and mask inputs are constants); the image encoder is not called.

    The caller provides the data: masks covering more than 90% of the image are dropped
    beforehand (App. A), and ``gt_masks`` is in the padded input frame.

    Args:
        model: the SAM whose prompt encoder and mask decoder are run.
        embeddings: ``B×C×h×w`` image embeddings (the encoder runs once per image).
        gt_masks: ``P×S×S`` boolean masks in the padded input frame (``S = img_size``).
        image_index: ``P`` long, the embedding of each mask.
        generator: source of randomness of the prompts and the schedule.
        num_point_rounds: rounds adding a corrective point (8 in the paper).
        box_probability: chance that a mask's first prompt is a box.
        focal_weight, dice_weight, iou_weight: loss weights (20 : 1 : 1 in the paper).
        box_noise, box_max_noise: box jitter, see
            :func:`~sam_lightning.training.prompts.jitter_boxes`.
        schedule: which rounds add a prompt (its first entry must be True); default
            :func:`~sam_lightning.training.prompts.round_schedule`.
        text_embeddings: ``P×D`` CLIP embeddings (rows not in ``use_text`` are unused).
        use_text: ``P`` bool, the masks whose first prompt is their CLIP embedding.

    Returns:
        ``loss`` (mean over rounds, to backpropagate); detached: ``round_losses`` (R),
        ``focal``, ``dice``, ``iou_mse`` (means over rounds), ``round_iou`` (R, mean IoU in
        the input frame of the mask fed back each round), ``final_iou`` (P, that IoU after
        the last round), ``final_logits`` (``P×1×4h×4w``); and the ``schedule`` used.
    """
    frame = tuple(model.prompt_encoder.input_image_size)
    if gt_masks.ndim != 3 or tuple(gt_masks.shape[1:]) != frame or len(gt_masks) == 0:
        raise ValueError(
            f"expected P×{frame[0]}×{frame[1]} masks (P ≥ 1) in the padded input frame, "
            f"got {tuple(gt_masks.shape)}"
        )
    if image_index.shape != gt_masks.shape[:1]:
        raise ValueError(f"expected {len(gt_masks)} image indexes, got {tuple(image_index.shape)}")
    schedule = list(round_schedule(num_point_rounds, generator) if schedule is None else schedule)
    if not schedule or not schedule[0]:
        raise ValueError("the first round of the schedule must add the first prompt")

    gt = gt_masks.bool()
    low_res = model.prompt_encoder.mask_input_size
    targets = F.interpolate(gt[:, None].float(), size=low_res, mode="area")[:, 0] > 0.5
    first = first_prompts(gt, generator, box_probability, box_noise, box_max_noise)
    if use_text is not None and (text_embeddings is None or use_text.shape != gt.shape[:1]):
        raise ValueError("use_text needs P flags and P×D text_embeddings")
    groups = _Groups(first.use_box, use_text, text_embeddings)
    extra_coords = first.point_coords.new_zeros((len(gt), 0, 2))
    extra_labels = first.point_labels.new_zeros((len(gt), 0))
    mask_inputs = pred = None
    losses, terms, round_iou = [], [], []
    for new_prompt in schedule:
        if new_prompt and pred is not None:
            points, labels = corrective_points(pred, gt, generator)
            extra_coords = torch.cat([extra_coords, points[:, None]], dim=1)
            extra_labels = torch.cat([extra_labels, labels[:, None]], dim=1)
        logits, iou_pred = groups.decode(
            model,
            embeddings,
            image_index,
            point_coords=torch.cat([first.point_coords, extra_coords], dim=1),
            point_labels=torch.cat([first.point_labels, extra_labels], dim=1),
            boxes=first.boxes,
            mask_inputs=mask_inputs,
            multimask_output=extra_coords.shape[1] == 0,
        )
        out = sam_loss(logits, iou_pred, targets, focal_weight, dice_weight, iou_weight)
        losses.append(out["loss"])
        terms.append(torch.stack([out["focal"], out["dice"], out["iou_mse"]]))

        best = iou_pred.detach().argmax(dim=1)
        mask_inputs = logits.detach()[torch.arange(len(best), device=best.device), best, None]
        upsampled = F.interpolate(mask_inputs, frame, mode="bilinear", align_corners=False)
        pred = upsampled[:, 0] > model.mask_threshold
        round_iou.append(mask_iou(upsampled[:, 0], gt))

    focal, dice, iou_mse = torch.stack(terms).mean(dim=0)
    return {
        "loss": torch.stack(losses).mean(),
        "round_losses": torch.stack(losses).detach(),
        "focal": focal,
        "dice": dice,
        "iou_mse": iou_mse,
        "round_iou": torch.stack(round_iou).mean(dim=1),
        "final_iou": round_iou[-1],
        "final_logits": mask_inputs,
        "schedule": schedule,
    }


class _Groups:
    """Splits P prompts into point-first, box-first and text-first groups, decodes each
    group with its own prompt structure and puts the outputs back in the prompts' order."""

    def __init__(
        self, use_box: Tensor, use_text: Tensor | None, text_embeddings: Tensor | None
    ) -> None:
        text = torch.zeros_like(use_box) if use_text is None else use_text.bool()
        self.groups = [
            (torch.nonzero(~use_box & ~text)[:, 0], "point"),
            (torch.nonzero(use_box & ~text)[:, 0], "box"),
            (torch.nonzero(text)[:, 0], "text"),
        ]
        self.text_embeddings = text_embeddings
        self.inverse = torch.argsort(torch.cat([rows for rows, _ in self.groups]))

    def decode(
        self,
        model: Sam,
        embeddings: Tensor,
        image_index: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        boxes: Tensor,
        mask_inputs: Tensor | None,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Decodes ``P×N×2`` points (the first is the point prompt, unused by box-first and
        text-first prompts), ``P×4`` boxes (used by box-first prompts only) and the text
        embeddings (text-first prompts only)."""
        logits, ious = [], []
        for rows, kind in self.groups:
            if len(rows) == 0:
                continue
            coords, labels = point_coords[rows], point_labels[rows]
            if kind != "point":
                coords, labels = coords[:, 1:], labels[:, 1:]
                if coords.shape[1] == 0:
                    coords = labels = None
            text = self.text_embeddings[rows] if kind == "text" else None
            group_logits, group_ious = model.decode(
                embeddings,
                point_coords=coords,
                point_labels=labels,
                boxes=boxes[rows] if kind == "box" else None,
                mask_inputs=None if mask_inputs is None else mask_inputs[rows],
                multimask_output=multimask_output,
                image_index=image_index[rows],
                text_embeddings=text,
            )
            logits.append(group_logits)
            ious.append(group_ious)
        return torch.cat(logits)[self.inverse], torch.cat(ious)[self.inverse]
