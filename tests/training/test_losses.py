"""Losses of SAM training against per-element reference implementations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sam_lightning.training.losses import dice_loss, mask_iou, sam_loss, sigmoid_focal_loss


def _reference_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float):
    """Per-element focal loss written out with ``math``, averaged per mask."""
    out = torch.empty(logits.shape[:-2], dtype=torch.float64)
    for index in itertools.product(*map(range, logits.shape[:-2])):
        total, count = 0.0, 0
        for x, t in zip(logits[index].flatten().tolist(), targets[index].flatten().tolist()):
            p = 1 / (1 + math.exp(-x))
            p_t = p if t else 1 - p
            alpha_t = alpha if t else 1 - alpha
            total += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
            count += 1
        out[index] = total / count
    return out


def _reference_dice(logits: torch.Tensor, targets: torch.Tensor):
    out = torch.empty(logits.shape[:-2], dtype=torch.float64)
    for index in itertools.product(*map(range, logits.shape[:-2])):
        probs = [1 / (1 + math.exp(-x)) for x in logits[index].flatten().tolist()]
        ts = [float(t) for t in targets[index].flatten().tolist()]
        inter = sum(p * t for p, t in zip(probs, ts))
        out[index] = 1 - (2 * inter + 1) / (sum(probs) + sum(ts) + 1)
    return out


def _torchvision_focal(logits, targets, alpha=0.25, gamma=2.0):
    """``torchvision.ops.sigmoid_focal_loss`` formula (reduction 'none'), mean per mask."""
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=(-2, -1))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    targets = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64) < 0.4
    return logits, targets


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.9, 1.5)])
def test_focal_matches_reference(batch, alpha, gamma):
    logits, targets = batch
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma)
    assert ours.shape == (2, 3)
    torch.testing.assert_close(ours, _reference_focal(logits, targets, alpha, gamma))
    torch.testing.assert_close(ours, _torchvision_focal(logits, targets.double(), alpha, gamma))


def test_focal_without_alpha_and_gamma_is_bce(batch):
    logits, targets = batch
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets.double(), reduction="none"
    ).mean(dim=(-2, -1))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0), bce)


def test_dice_matches_reference(batch):
    logits, targets = batch
    torch.testing.assert_close(dice_loss(logits, targets), _reference_dice(logits, targets))


def test_dice_of_confident_correct_mask_is_near_zero():
    targets = torch.zeros(1, 8, 8, dtype=torch.bool)
    targets[0, 2:6, 2:6] = True
    logits = torch.where(targets, 30.0, -30.0)
    assert dice_loss(logits, targets).item() < 1e-6
    assert dice_loss(-logits, targets).item() > 0.9


def test_mask_iou():
    targets = torch.zeros(3, 4, 4, dtype=torch.bool)
    targets[0, :2, :2] = True  # 4 pixels
    logits = -torch.ones(3, 4, 4)
    logits[0, :2, :3] = 1.0  # 6 predicted, 4 overlapping -> 4/6
    logits[1, 0, 0] = 1.0  # predicted pixel, empty target -> 0
    # row 2: both empty -> 1
    torch.testing.assert_close(mask_iou(logits, targets), torch.tensor([4 / 6, 0.0, 1.0]))


def _targets_and_logits():
    """Targets of 3 prompts and K = 3 candidate masks, candidate ``good[p]`` right."""
    targets = torch.zeros(3, 16, 16, dtype=torch.bool)
    targets[0, 2:8, 2:8] = True
    targets[1, 8:, :] = True
    targets[2, 5:12, 3:14] = True
    good = torch.tensor([2, 0, 1])
    logits = torch.full((3, 3, 16, 16), -4.0)
    for p in range(3):
        for k in range(3):
            if k == good[p]:
                logits[p, k] = torch.where(targets[p], 4.0, -4.0)
            else:  # wrong masks: a shifted target
                logits[p, k] = torch.where(targets[p].roll(5 + 2 * k, dims=1), 4.0, -4.0)
    return targets, logits, good


def test_sam_loss_picks_minimum_over_masks():
    targets, logits, good = _targets_and_logits()
    logits.requires_grad_(True)
    iou_pred = torch.full((3, 3), 0.5, requires_grad=True)
    out = sam_loss(logits, iou_pred, targets)
    assert torch.equal(out["chosen"], good)

    rows = torch.arange(3)
    focal = _reference_focal(logits.detach()[rows, good], targets, 0.25, 2.0).float()
    dice = _reference_dice(logits.detach()[rows, good], targets).float()
    actual_iou = mask_iou(logits.detach()[rows, good], targets)
    torch.testing.assert_close(actual_iou, torch.ones(3))
    expected = (20 * focal + dice + (0.5 - actual_iou) ** 2).mean()
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["focal"], focal.mean())
    torch.testing.assert_close(out["dice"], dice.mean())
    torch.testing.assert_close(out["iou_mse"], torch.tensor(0.25))

    out["loss"].backward()
    chosen = torch.zeros(3, 3, dtype=torch.bool)
    chosen[rows, good] = True
    # Only the chosen mask and its IoU prediction get gradients.
    assert logits.grad[chosen].abs().sum() > 0
    assert logits.grad[~chosen].abs().sum() == 0
    assert (iou_pred.grad[~chosen] == 0).all()
    torch.testing.assert_close(iou_pred.grad[chosen], 2 * (0.5 - actual_iou) / 3)


def test_sam_loss_iou_target_is_actual_iou_of_chosen_mask():
    targets = torch.zeros(1, 8, 8, dtype=torch.bool)
    targets[0, :4, :4] = True  # 16 pixels
    logits = torch.where(targets, 5.0, -5.0)[:, None].clone()
    logits[0, 0, 4:6, :4] = 0.5  # 8 false-positive pixels -> IoU 16/24
    iou_pred = torch.tensor([[0.9]])
    out = sam_loss(logits, iou_pred, targets, iou_weight=1.0)
    torch.testing.assert_close(out["iou"], torch.tensor([16 / 24]))
    torch.testing.assert_close(out["iou_mse"], torch.tensor((0.9 - 16 / 24) ** 2))
    # The weights are applied.
    out2 = sam_loss(logits, iou_pred, targets, focal_weight=0.0, dice_weight=0.0, iou_weight=3.0)
    torch.testing.assert_close(out2["loss"], 3 * out["iou_mse"])


def test_sam_loss_weights_decide_the_choice():
    """Mask 0 has the lower focal loss, mask 1 the lower dice loss: the weighting picks."""
    targets = torch.zeros(1, 10, 10, dtype=torch.bool)
    targets[0, :5] = True
    low_dice = torch.where(targets, 0.3, -0.3)  # right everywhere but unsure
    low_focal = torch.where(targets, 20.0, -20.0)
    low_focal[0, :5, :3] = -20.0  # confidently wrong on 15 pixels
    logits = torch.stack([low_dice, low_focal], dim=1)
    iou_pred = torch.zeros(1, 2)
    focal = sigmoid_focal_loss(logits, targets[:, None])
    dice = dice_loss(logits, targets[:, None])
    assert int(focal.argmin()) != int(dice.argmin())  # the two terms disagree
    expected = int((20 * focal + dice).argmin())
    assert sam_loss(logits, iou_pred, targets)["chosen"].item() == expected
    dice_only = sam_loss(logits, iou_pred, targets, focal_weight=0.0)["chosen"].item()
    assert dice_only == int(dice.argmin())
    assert dice_only != expected


def test_sam_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="targets"):
        sam_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="IoU"):
        sam_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1), torch.zeros(2, 8, 8))
