"""The click protocol's geometry (:mod:`sam_lightning.inference.clicks`): the exact deepest
pixel against the brute-force distance transform, corrective clicks, and the mask IoU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam_lightning.inference import clicks
from sam_lightning.inference.clicks import (
    corrective_clicks,
    deepest_points,
    interior_points,
    mask_iou,
)


def brute_force_sq_edt(masks: torch.Tensor) -> torch.Tensor:
    """Squared distance from each pixel to the nearest pixel outside the mask, the frame
    padded by one background pixel: the definition, by exhaustive search."""
    p, h, w = masks.shape
    padded = F.pad(masks, (1, 1, 1, 1))
    yy, xx = torch.meshgrid(torch.arange(h + 2), torch.arange(w + 2), indexing="ij")
    grid = torch.stack([yy.flatten(), xx.flatten()], 1)
    out = torch.zeros(p, h, w, dtype=torch.long)
    for i in range(p):
        background = grid[~padded[i].flatten()]
        sq = (grid[:, None] - background[None]).square().sum(-1).amin(1)
        out[i] = sq.view(h + 2, w + 2)[1:-1, 1:-1] * masks[i]
    return out


def first_argmax(values: torch.Tensor) -> tuple[int, int, int]:
    """``(x, y, max)`` of the first maximum in raster order of an ``H×W`` tensor."""
    flat = values.flatten()
    index = int(torch.nonzero(flat == flat.max())[0])
    return index % values.shape[1], index // values.shape[1], int(flat.max())


@pytest.mark.parametrize("chunk", [1 << 22, 7])
@pytest.mark.parametrize("shape", [(9, 13), (16, 16), (21, 7)])
def test_deepest_points_match_the_brute_force_transform(shape, chunk, monkeypatch):
    """Also with chunks of a few candidates: pruning by the depth found so far."""
    monkeypatch.setattr(clicks, "_CHUNK_ELEMENTS", chunk)
    generator = torch.Generator().manual_seed(sum(shape))
    density = torch.linspace(0.3, 1.0, 60)[:, None, None]
    masks = torch.rand(60, *shape, generator=generator) < density
    masks[0] = False  # an empty region
    masks[1] = True  # the whole frame: the border counts as outside
    excluded = torch.rand(60, *shape, generator=generator) < 0.2
    sq_edt = brute_force_sq_edt(masks)
    for blocked in (None, excluded):
        points, depths = deepest_points(masks, blocked)
        allowed = sq_edt if blocked is None else sq_edt.masked_fill(blocked, 0)
        for i in range(len(masks)):
            x, y, depth = first_argmax(allowed[i])
            expected = [x, y] if depth > 0 else [0, 0]
            assert (points[i].tolist(), int(depths[i])) == (expected, depth), i


def test_deepest_points_of_large_shapes():
    ndimage = pytest.importorskip("scipy.ndimage")
    size = 300
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(4, size, size, dtype=torch.bool)
    masks[0] = (yy - 140) ** 2 + (xx - 170) ** 2 <= 90**2  # a disc: its centre
    masks[1, 10:290, 100:161] = True  # a tall plateau: its first pixel
    masks[2] = (yy - xx).abs() <= 20  # a diagonal band: loose row and column bounds
    masks[3] = masks[0] & ((yy - 140) ** 2 + (xx - 170) ** 2 > 60**2)  # a ring
    points, depths = deepest_points(masks)
    # nearest outside pixels of the centre: 90² + 1² = 8101 > 90² (inside)
    assert points[0].tolist() == [170, 140] and depths[0] == 8101
    assert points[1].tolist() == [130, 40] and depths[1] == 31**2
    for i in range(4):
        edt = ndimage.distance_transform_edt(F.pad(masks[i], (1, 1, 1, 1)).numpy())
        sq_edt = torch.from_numpy(edt[1:-1, 1:-1] ** 2).round().long()
        assert (points[i].tolist(), int(depths[i])) == (
            list(first_argmax(sq_edt)[:2]),
            int(sq_edt.max()),
        )


def test_interior_points_are_exact():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:7, 7:12] = True  # 5×5 touching the right border, which counts as outside
    assert interior_points(masks).tolist() == [[9, 4], [0, 0]]


def blob(size: int, y0: int, x0: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def test_a_false_negative_blob_gets_a_positive_click_at_its_centre():
    gt = blob(40, 5, 5, 30)[None]
    pred = gt & ~blob(40, 10, 20, 7)  # a 7×7 hole: centre (23, 13)
    points, labels = corrective_clicks(pred, gt)
    assert points.tolist() == [[23, 13]] and labels.tolist() == [1]


def test_a_false_positive_blob_gets_a_negative_click_at_its_centre():
    gt = blob(40, 5, 5, 20)[None]
    pred = gt | blob(40, 30, 28, 9)  # 9×9 outside the object: centre (32, 34)
    pred[0, 5, 5] = False  # a smaller false negative
    points, labels = corrective_clicks(pred, gt)
    assert points.tolist() == [[32, 34]] and labels.tolist() == [0]


def test_click_rules_ties_exclusions_and_perfect_masks():
    gt = torch.stack([blob(20, 2, 2, 5), blob(20, 2, 2, 5), blob(20, 2, 2, 8)])
    pred = gt.clone()
    pred[0] |= blob(20, 12, 12, 5)  # false positive as deep as the missed object: negative
    pred[0, 2:7, 2:7] = False
    # mask 1 is perfect: no click; mask 2 misses a 3x3 square, its centre already clicked
    pred[2, 4:7, 4:7] = False
    clicked = torch.zeros_like(gt)
    clicked[2, 5, 5] = True
    points, labels = corrective_clicks(pred, gt, clicked)
    assert labels.tolist() == [0, -1, 1]
    assert points[0].tolist() == [14, 14] and points[1].tolist() == [0, 0]
    assert points[2].tolist() == [4, 4]  # the first of the depth-1 pixels left


def test_mask_iou_is_the_exact_ratio_in_float64():
    pred = torch.zeros(3, 4, 5, dtype=torch.bool)
    gt = torch.zeros_like(pred)
    pred[0, :2] = True  # 10 pixels, 2 of them in the 4 of gt: 2 / 12
    gt[0, :, 0] = True
    pred[1, 0, 0], gt[1, 3, 4] = True, True  # disjoint: 0
    iou = mask_iou(pred, gt)  # mask 2: both empty, 1
    assert iou.dtype == torch.float64 and iou.tolist() == [2 / 12, 0.0, 1.0]
    # ``...×H×W``, broadcast: K masks of each object against its ground truth
    many = torch.stack([pred, gt, ~gt], dim=1)
    expected = [[2 / 12, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert mask_iou(many, gt[:, None]).tolist() == expected


def test_float32_ious_round_the_same_ratio():
    """Training keeps float32 IoUs (validation metrics, the loss's IoU target): rounding the
    float64 IoU gives exactly the float32 division of the pixel counts it always was."""
    from sam_lightning.training.losses import mask_iou as loss_iou

    generator = torch.Generator().manual_seed(0)
    density = torch.rand(500, 1, 1, generator=generator)
    logits = torch.randn(500, 37, 53, generator=generator) + density - 0.5
    gt = torch.rand(500, 37, 53, generator=generator) < density
    pred = logits > 0
    old = (pred & gt).flatten(1).sum(1).float() / (pred | gt).flatten(1).sum(1)
    assert torch.equal(mask_iou(pred, gt).float(), old)
    assert torch.equal(loss_iou(logits, gt), old)
    assert torch.equal(loss_iou(logits.bfloat16(), gt), old.bfloat16())
