"""Validation metrics: the exact deepest pixel, corrective clicks and the mIoU after N
clicks (batched decoding, mask feedback, click 1 = the 1-point metric)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam_lightning.modeling.build import build_sam
from sam_lightning.training import evaluation
from sam_lightning.training.evaluation import (
    corrective_click_ious,
    corrective_clicks,
    deepest_points,
    interior_points,
    single_prompt_ious,
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
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", chunk)
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


SIZE = 64  # input frame; low-resolution logits are 16×16


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_sam("vit_tiny", image_size=SIZE)
    with torch.no_grad():
        embeddings = model.encode_images(torch.rand(2, 3, SIZE, SIZE) * 255)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    gt = torch.stack(
        [
            blob(SIZE, 8, 10, 30),
            (yy - 40) ** 2 + (xx - 36) ** 2 < 15**2,
            blob(SIZE, 40, 4, 12) | blob(SIZE, 4, 44, 14),
        ]
    )
    return model, embeddings, gt, torch.tensor([0, 1, 0])


def test_corrective_click_ious_on_a_tiny_model(tiny, monkeypatch):
    model, embeddings, gt, image_index = tiny
    calls = []
    decode = model.decode

    def spy(embeddings, **kwargs):
        logits, scores = decode(embeddings, **kwargs)
        calls.append({**kwargs, "logits": logits, "scores": scores})
        return logits, scores

    monkeypatch.setattr(model, "decode", spy)
    ious = corrective_click_ious(model, embeddings, gt, image_index, num_clicks=4)
    assert ious.shape == (3, 4) and ious.dtype.is_floating_point
    assert ((ious >= 0) & (ious <= 1)).all()
    # one batched call per click; random weights leave every mask wrong
    assert len(calls) == 4 and calls[0]["multimask_output"] and "mask_inputs" not in calls[0]
    kept = calls[0]["logits"][torch.arange(3), calls[0]["scores"].argmax(1), None]
    for n, call in enumerate(calls[1:], start=2):
        assert call["point_coords"].shape == (3, n, 2) and not call["multimask_output"]
        assert torch.equal(call["image_index"], image_index)
        assert torch.equal(call["point_coords"][:, : n - 1], calls[n - 2]["point_coords"])
        assert torch.equal(call["mask_inputs"], kept)  # the previous round's chosen logits
        kept = call["logits"]
    # click 2: the corrective click of the round-1 prediction, click 1 excluded
    pred = F.interpolate(calls[1]["mask_inputs"], SIZE, mode="bilinear") > 0
    clicked = torch.zeros_like(gt)
    first = calls[0]["point_coords"][:, 0].long()
    clicked[torch.arange(3), first[:, 1], first[:, 0]] = True
    points, labels = corrective_clicks(pred[:, 0], gt, clicked)
    assert torch.equal(calls[1]["point_coords"][:, 1], points.float())
    assert torch.equal(calls[1]["point_labels"][:, 1], labels)
    monkeypatch.undo()
    one_point = single_prompt_ious(model, embeddings, gt, image_index)["1pt"]
    torch.testing.assert_close(ious[:, 0], one_point)
    assert torch.equal(ious[:, :2], corrective_click_ious(model, embeddings, gt, image_index, 2))


class ScriptedModel:
    """Returns given low-resolution logits, per call, for the masks it is asked about."""

    mask_threshold = 0.0

    def __init__(self, rounds: list[torch.Tensor]) -> None:
        self.rounds, self.calls = rounds, []

    def decode(self, embeddings, **kwargs):
        rows = kwargs["image_index"]  # here: the mask's own index
        logits = self.rounds[len(self.calls)][rows]
        self.calls.append(kwargs)
        k = 3 if kwargs["multimask_output"] else 1
        scores = torch.zeros(len(rows), k)
        scores[:, -1] = 1  # the last mask is the most confident
        return logits[:, None].expand(-1, k, -1, -1), scores


def block_logits(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """16×16 logits, positive on ``[y0, y1) × [x0, x1)``."""
    logits = torch.full((16, 16), -10.0)
    logits[y0:y1, x0:x1] = 10.0
    return logits


def test_a_mask_without_error_gets_no_more_clicks():
    perfect = torch.stack([block_logits(4, 8, 4, 8), block_logits(2, 10, 2, 10)])
    first = torch.stack([block_logits(4, 8, 4, 8), block_logits(4, 8, 4, 8)])
    gt = F.interpolate(perfect[:, None], SIZE, mode="bilinear")[:, 0] > 0
    pred = F.interpolate(first[1, None, None], SIZE, mode="bilinear")[0, 0] > 0
    round1 = float((pred & gt[1]).sum() / (pred | gt[1]).sum())
    model = ScriptedModel([first, perfect, perfect])
    ious = corrective_click_ious(model, None, gt, torch.tensor([0, 1]), num_clicks=3)
    assert ious.tolist() == [[1.0, 1.0, 1.0], [round1, 1.0, 1.0]] and round1 < 0.5
    assert len(model.calls) == 2  # round 3: nothing left to correct
    second = model.calls[1]
    assert second["image_index"].tolist() == [1]  # mask 0 was already perfect
    assert torch.equal(second["mask_inputs"], first[[1], None])
    assert second["point_labels"].tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="num_clicks"):
        corrective_click_ious(model, None, gt, torch.tensor([0, 1]), num_clicks=0)
