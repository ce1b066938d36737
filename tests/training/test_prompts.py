"""Prompt simulation: points inside their regions, box noise, the 11-round schedule."""

from __future__ import annotations

import pytest
import torch

from sam_lightning.training.prompts import (
    corrective_points,
    first_prompts,
    jitter_boxes,
    mask_boxes,
    num_rounds,
    round_schedule,
    sample_points,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values of ``P×H×W`` masks at ``P×2`` integer ``(x, y)`` points."""
    x, y = points.long().unbind(dim=1)
    return masks[torch.arange(len(masks)), y, x]


def _blobs(p: int, seed: int, h: int = 40, w: int = 56) -> torch.Tensor:
    """Random irregular masks (some tiny) of ``P×H×W``."""
    g = _gen(seed)
    masks = torch.rand(p, h // 4, w // 4, generator=g) < torch.rand(p, 1, 1, generator=g)
    masks = masks.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    return masks & (torch.rand(p, h, w, generator=g) < 0.7)


def test_sample_points_lie_in_their_regions():
    regions = _blobs(64, 0)
    regions[3] = False
    regions[5] = False
    regions[5, 39, 55] = True  # single pixel at the far corner
    for seed in range(20):
        points, valid = sample_points(regions, _gen(seed))
        assert points.shape == (64, 2) and points.dtype == torch.float32
        assert torch.equal(valid, regions.flatten(1).any(dim=1))
        assert _at(regions, points)[valid].all()
        assert torch.equal(points[5], torch.tensor([55.0, 39.0]))  # (x, y) = (column, row)
        assert torch.equal(points[3], torch.zeros(2))


def test_sample_points_is_uniform():
    region = torch.zeros(1, 6, 7, dtype=torch.bool)
    cells = [(0, 0), (2, 5), (3, 1), (5, 6)]  # (row, column)
    for r, c in cells:
        region[0, r, c] = True
    points, valid = sample_points(region.expand(8000, -1, -1), _gen(1))
    assert valid.all()
    counts = [int(((points[:, 0] == c) & (points[:, 1] == r)).sum()) for r, c in cells]
    assert sum(counts) == 8000
    assert all(1800 < n < 2200 for n in counts), counts


def test_sample_points_is_deterministic():
    regions = _blobs(16, 2)
    a, _ = sample_points(regions, _gen(7))
    b, _ = sample_points(regions, _gen(7))
    c, _ = sample_points(regions, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_mask_boxes():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:5, 7:11] = True
    masks[1, 19, 0] = True
    masks[1, 0, 29] = True
    expected = torch.tensor([[7.0, 2.0, 10.0, 4.0], [0.0, 0.0, 29.0, 19.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(mask_boxes(masks), expected)


def test_jitter_boxes_noise_is_bounded_and_has_the_paper_sigma():
    n, h, w = 4000, 400, 400
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    masks[: n // 2, 100:151, 120:221] = True  # box 100 wide, 50 high: sigma 10 and 5 px
    masks[n // 2 :, 30:371, 30:371] = True  # 340 px sides: sigma 34, clipped at 20
    tight = mask_boxes(masks)
    boxes = jitter_boxes(masks, _gen(0))
    offsets = boxes - tight
    assert offsets.abs().max() <= 20.0
    small, large = offsets[: n // 2], offsets[n // 2 :]
    std = small.std(dim=0)
    assert torch.allclose(std, torch.tensor([10.0, 5.0, 10.0, 5.0]), rtol=0.1), std
    assert torch.allclose(small.mean(dim=0), torch.zeros(4), atol=0.6)
    # With sigma 34, P(|offset| > 20) = 2(1 - Phi(20 / 34)) = 0.556: these reach the bound.
    at_bound = (large.abs() > 19.999).float().mean()
    assert 0.52 < at_bound < 0.59, at_bound


def test_jitter_boxes_stay_in_the_image_and_ordered():
    masks = torch.zeros(500, 30, 40, dtype=torch.bool)
    masks[:, 0:30, 0:3] = True  # touches three borders and is thin
    boxes = jitter_boxes(masks, _gen(3), noise=0.5, max_noise=20.0)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 39).all() and (boxes[:, 3] <= 29).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert not torch.equal(boxes, mask_boxes(masks))
    assert torch.equal(jitter_boxes(masks, _gen(3), noise=0.5), boxes)  # deterministic
    assert torch.equal(jitter_boxes(masks, _gen(3), noise=0.0), mask_boxes(masks))


def test_first_prompts():
    masks = _blobs(2000, 4)
    masks[:, 0, 0] = True  # none empty
    prompts = first_prompts(masks, _gen(5))
    assert prompts.point_coords.shape == (2000, 1, 2)
    assert prompts.point_labels.shape == (2000, 1)
    assert prompts.boxes.shape == (2000, 4)
    assert (prompts.point_labels == 1).all()
    assert _at(masks, prompts.point_coords[:, 0]).all()
    assert 0.45 < prompts.use_box.float().mean() < 0.55
    assert not first_prompts(masks, _gen(5), box_probability=0.0).use_box.any()
    assert first_prompts(masks, _gen(5), box_probability=1.0).use_box.all()
    again = first_prompts(masks, _gen(5))
    assert all(torch.equal(a, b) for a, b in zip(prompts, again))


def test_first_prompts_of_an_empty_mask_is_padding():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2, 3] = True
    prompts = first_prompts(masks, _gen(0), box_probability=0.0)
    assert prompts.point_labels[:, 0].tolist() == [1, -1]


def test_corrective_points_sample_the_error_region_with_its_label():
    gt = torch.zeros(300, 24, 24, dtype=torch.bool)
    gt[:, 4:16, 4:16] = True
    pred = torch.zeros_like(gt)
    pred[:, 8:20, 8:20] = True  # false negatives: top-left L, false positives: bottom-right L
    false_neg, false_pos = gt & ~pred, pred & ~gt
    for seed in range(5):
        points, labels = corrective_points(pred, gt, _gen(seed))
        assert labels.dtype == torch.long
        positive, negative = labels == 1, labels == 0
        assert (positive | negative).all()
        assert _at(false_neg, points)[positive].all()
        assert _at(false_pos, points)[negative].all()
        # The error region is split evenly (80 + 80 pixels).
        assert 0.4 < positive.float().mean() < 0.6


def test_corrective_points_without_error():
    gt = torch.zeros(3, 10, 10, dtype=torch.bool)
    gt[0, 2:4, 5:9] = True
    gt[1, 7, 1] = True
    points, labels = corrective_points(gt.clone(), gt, _gen(0))
    assert labels.tolist() == [1, 1, -1]  # perfect: a positive point in the gt; empty: pad
    assert _at(gt, points)[:2].all()
    assert torch.equal(points[1], torch.tensor([1.0, 7.0]))


def test_corrective_point_of_a_missed_pixel_is_positive_and_of_an_extra_one_negative():
    gt = torch.zeros(2, 10, 10, dtype=torch.bool)
    gt[:, 3:6, 3:6] = True
    pred = gt.clone()
    pred[0, 4, 4] = False  # one false negative
    pred[1, 9, 2] = True  # one false positive
    points, labels = corrective_points(pred, gt, _gen(0))
    assert points.tolist() == [[4.0, 4.0], [2.0, 9.0]]
    assert labels.tolist() == [1, 0]


def test_round_schedule():
    assert num_rounds() == 11
    slots = set()
    for seed in range(200):
        schedule = round_schedule(8, _gen(seed))
        assert len(schedule) == num_rounds(8) == 11
        assert schedule[0] and not schedule[-1]
        assert schedule.count(False) == 2
        assert schedule.count(True) == 9
        slots.add(schedule.index(False))
    # The inserted round falls before any of the 8 corrective rounds: positions 1..8.
    assert slots == set(range(1, 9))
    assert round_schedule(8, _gen(11)) == round_schedule(8, _gen(11))
    assert len(round_schedule(3, _gen(0))) == num_rounds(3) == 6
    with pytest.raises(ValueError):
        round_schedule(0)
