"""Validation metrics: the mIoU after N clicks (batched decoding, mask feedback, click 1 =
the 1-point metric) of :mod:`sam_lightning.training.validation`; the click geometry is tested
in tests/inference/test_clicks.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam_lightning.inference.clicks import corrective_clicks
from sam_lightning.modeling.build import build_sam
from sam_lightning.training.validation import corrective_click_ious, single_prompt_ious


def blob(size: int, y0: int, x0: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


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
