"""Mask losses of SAM training (paper §3 and App. A): focal and dice losses on the mask
logits, minimum over the ambiguity masks, MSE on the predicted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.inference import clicks


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss (Lin et al., as in ``torchvision.ops.sigmoid_focal_loss``) of ``...×H×W``
    mask logits against binary targets of the same shape, averaged over the pixels of each
    mask: returns ``...``. ``alpha < 0`` disables the class weighting."""
    targets = targets.to(logits.dtype).expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss ``1 - (2|p·t| + 1) / (|p| + |t| + 1)`` of the sigmoid probabilities of
    ``...×H×W`` mask logits against binary targets (the +1 smoothing of DETR and SAM 2),
    per mask: returns ``...``."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.to(prob.dtype).flatten(-2)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of the predicted masks (``logits > 0``) of ``...×H×W`` logits with binary targets,
    per mask: returns ``...`` (float, no gradient). Two empty masks have IoU 1. The
    validation's and the App. D.1 harness's IoU
    (:func:`sam_lightning.inference.clicks.mask_iou`), rounded to float32 (the value of a
    float32 division of the pixel counts) and then to the logits' dtype."""
    return clicks.mask_iou(logits > 0, targets.bool()).float().to(logits.dtype)


def sam_loss(
    mask_logits: Tensor,
    iou_pred: Tensor,
    targets: Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> dict[str, Tensor]:
    """The SAM training loss of one decoder call, averaged over the prompts.

    Per prompt, each of the K output masks gets ``focal_weight·focal + dice_weight·dice``
    (20:1 in the paper) and only the lowest one is backpropagated (paper §3, "we backprop
    only the minimum loss over masks"). The IoU head is supervised with the MSE between
    the predicted IoU of that chosen mask and the actual IoU of its thresholded prediction
    with the target (App. A; as in SAM 2 without ``supervise_all_iou``). Supervising only
    the chosen mask follows the paper's wording and avoids pulling the IoU predictions of
    the unchosen masks, whose logits receive no gradient, towards targets of masks that
    the decoder is not trained to make; the IoU target is a constant (no gradient).

    Args:
        mask_logits: ``P×K×H×W`` mask logits.
        iou_pred: ``P×K`` predicted IoUs.
        targets: ``P×H×W`` binary targets at the resolution of the logits (downsample the
            ground truth or upsample the logits before calling).
        focal_weight, dice_weight, iou_weight: weights of the three terms.

    Returns:
        ``loss`` (scalar, to backpropagate), the means over prompts of the chosen masks'
        ``focal``, ``dice`` and ``iou_mse`` (detached), ``chosen`` (``P`` indexes into K)
        and ``iou`` (``P``, actual IoU of the chosen masks).
    """
    if mask_logits.ndim != 4 or targets.shape != mask_logits.shape[:1] + mask_logits.shape[2:]:
        raise ValueError(
            f"expected P×K×H×W logits and P×H×W targets, got {tuple(mask_logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if iou_pred.shape != mask_logits.shape[:2]:
        raise ValueError(f"expected P×K IoU predictions, got {tuple(iou_pred.shape)}")
    targets_p1hw = targets[:, None].to(mask_logits.dtype)
    focal = sigmoid_focal_loss(mask_logits, targets_p1hw)
    dice = dice_loss(mask_logits, targets_p1hw)
    chosen = (focal_weight * focal + dice_weight * dice).detach().argmin(dim=1)
    rows = torch.arange(len(chosen), device=chosen.device)
    focal, dice = focal[rows, chosen], dice[rows, chosen]
    iou = mask_iou(mask_logits[rows, chosen].detach(), targets)
    iou_mse = (iou_pred[rows, chosen] - iou.to(iou_pred.dtype)) ** 2
    loss = focal_weight * focal + dice_weight * dice + iou_weight * iou_mse
    return {
        "loss": loss.mean(),
        "focal": focal.detach().mean(),
        "dice": dice.detach().mean(),
        "iou_mse": iou_mse.detach().mean(),
        "chosen": chosen,
        "iou": iou,
    }
