"""Simulated interactive training on a tiny SAM: shapes, prompt flow, gradients, overfitting."""

from __future__ import annotations

import pytest
import torch

from sam_lightning.modeling.build import build_sam
from sam_lightning.training.interactive import simulate_interactive
from sam_lightning.training.prompts import first_prompts

SIZE = 256  # input frame; low-resolution logits are 64×64


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_sam("vit_tiny", image_size=SIZE)
    with torch.no_grad():
        embeddings = model.encode_images(torch.rand(2, 3, SIZE, SIZE) * 255)
    gt = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    gt[0, 20:100, 30:120] = True
    gt[1, 150:220, 40:90] = True
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    gt[2] = (yy - 170) ** 2 + (xx - 180) ** 2 < 40**2
    image_index = torch.tensor([0, 1, 0])
    return model, embeddings, gt, image_index


@pytest.fixture
def model(setup):
    """The module's model with fresh gradients and the encoder made uncallable."""
    model = setup[0]
    model.zero_grad(set_to_none=True)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the image encoder must not run")

    patch = pytest.MonkeyPatch()
    patch.setattr(model.image_encoder, "forward", no_encoder)
    patch.setattr(model, "encode_images", no_encoder)
    yield model
    patch.undo()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spy(model, monkeypatch):
    """Records the arguments and outputs of every ``model.decode`` call."""
    calls = []
    decode = model.decode

    def spy(embeddings, **kwargs):
        out = decode(embeddings, **kwargs)
        calls.append({**kwargs, "logits": out[0]})
        return out

    monkeypatch.setattr(model, "decode", spy)
    return calls


def test_outputs_and_gradients(setup, model):
    _, embeddings, gt, image_index = setup
    out = simulate_interactive(model, embeddings, gt, image_index, _gen())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert len(out["schedule"]) == 11 and out["schedule"].count(False) == 2
    assert out["round_losses"].shape == (11,) and out["round_iou"].shape == (11,)
    assert out["final_iou"].shape == (3,)
    assert out["final_logits"].shape == (3, 1, 64, 64)
    torch.testing.assert_close(out["loss"].detach(), out["round_losses"].mean())
    for key in ("focal", "dice", "iou_mse"):
        assert out[key].ndim == 0 and not out[key].requires_grad
    out["loss"].backward()
    for name in (
        "prompt_encoder.point_embeddings.0.weight",  # negative corrective points
        "prompt_encoder.point_embeddings.1.weight",  # positive points
        "prompt_encoder.point_embeddings.2.weight",  # box corners
        "prompt_encoder.mask_downscaling.0.weight",  # mask feedback
        "prompt_encoder.no_mask_embed.weight",  # round 1
        "mask_decoder.iou_prediction_head.layers.2.weight",
        "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",  # single-mask output
        "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight",  # a multimask output
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_determinism(setup, model):
    _, embeddings, gt, image_index = setup
    a = simulate_interactive(model, embeddings, gt, image_index, _gen(3), num_point_rounds=2)
    b = simulate_interactive(model, embeddings, gt, image_index, _gen(3), num_point_rounds=2)
    c = simulate_interactive(model, embeddings, gt, image_index, _gen(4), num_point_rounds=2)
    assert torch.equal(a["round_losses"], b["round_losses"])
    assert not torch.equal(a["round_losses"], c["round_losses"])


def test_prompt_flow_between_rounds(setup, model, monkeypatch):
    _, embeddings, gt, image_index = setup
    calls = _spy(model, monkeypatch)
    schedule = [True, False, True, True, False]
    out = simulate_interactive(
        model, embeddings, gt, image_index, _gen(0), box_probability=0.5, schedule=schedule
    )
    assert out["schedule"] == schedule
    # Seed 0 gives both point-first and box-first prompts: two decoder calls per round.
    use_box = first_prompts(gt, _gen(0)).use_box
    assert 0 < use_box.sum() < 3
    assert len(calls) == 2 * len(schedule)
    rounds = [calls[i : i + 2] for i in range(0, len(calls), 2)]
    corrective = [0, 0, 1, 2, 2]
    for r, (points_call, box_call) in enumerate(rounds):
        assert points_call["boxes"] is None and box_call["boxes"] is not None
        assert points_call["point_coords"].shape[1] == 1 + corrective[r]
        if corrective[r] == 0:
            assert box_call["point_coords"] is None
        else:
            assert box_call["point_coords"].shape[1] == corrective[r]
        # Multimask while there is one prompt (also in the no-point round 2), then single.
        for call in (points_call, box_call):
            assert call["multimask_output"] is (corrective[r] == 0)
            assert call["logits"].shape[1] == (3 if corrective[r] == 0 else 1)
            if r == 0:
                assert call["mask_inputs"] is None
            else:
                assert call["mask_inputs"].shape[1:] == (1, 64, 64)
                assert not call["mask_inputs"].requires_grad
    # The points of a round are those of the previous round plus one.
    assert torch.equal(rounds[3][0]["point_coords"][:, :2], rounds[2][0]["point_coords"])
    assert torch.equal(rounds[4][0]["point_coords"], rounds[3][0]["point_coords"])


def test_mask_feedback_is_the_best_predicted_mask_in_prompt_order(setup, model, monkeypatch):
    """One round, checked against decoding each prompt alone with the same first prompts."""
    _, embeddings, gt, image_index = setup
    out = simulate_interactive(model, embeddings, gt, image_index, _gen(0), schedule=[True])
    prompts = first_prompts(gt, _gen(0))
    assert prompts.use_box.tolist() == [True, False, True]  # the groups interleave
    for p in range(3):
        box = prompts.use_box[p]
        logits, iou = model.decode(
            embeddings,
            point_coords=None if box else prompts.point_coords[p : p + 1],
            point_labels=None if box else prompts.point_labels[p : p + 1],
            boxes=prompts.boxes[p : p + 1] if box else None,
            image_index=image_index[p : p + 1],
        )
        best = logits[0, iou[0].argmax()]
        torch.testing.assert_close(out["final_logits"][p, 0], best.detach())


def test_rejects_masks_outside_the_input_frame(setup, model):
    _, embeddings, gt, image_index = setup
    with pytest.raises(ValueError, match="input frame"):
        simulate_interactive(model, embeddings, gt[:, :128], image_index, _gen())
    with pytest.raises(ValueError, match="image indexes"):
        simulate_interactive(model, embeddings, gt, image_index[:2], _gen())
    with pytest.raises(ValueError, match="first round"):
        simulate_interactive(model, embeddings, gt, image_index, _gen(), schedule=[False, True])


def test_training_overfits_a_tiny_batch(setup, model):
    _, embeddings, gt, image_index = setup
    params = [*model.prompt_encoder.parameters(), *model.mask_decoder.parameters()]
    state = {name: t.clone() for name, t in model.state_dict().items()}
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    try:
        for step in range(40):
            out = simulate_interactive(
                model, embeddings, gt, image_index, _gen(step), num_point_rounds=1
            )
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            losses.append(out["loss"].item())
    finally:
        model.load_state_dict(state)  # the model is shared by the module's tests
    initial, final = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # (From random weights the decoder first learns the background; the IoU only rises
    # after ~50 steps, too slow for a unit test.)
    assert final < 0.6 * initial, losses


def test_text_first_prompts(setup, monkeypatch):
    """Masks flagged ``use_text`` start from their CLIP embedding alone (multimask), then
    get corrective points after that token; the others keep their point or box."""
    _, embeddings, gt, image_index = setup
    torch.manual_seed(0)
    model = build_sam("vit_tiny", image_size=SIZE, text_embed_dim=8)
    text = torch.randn(3, 8)
    use_text = torch.tensor([False, True, False])
    one_round = simulate_interactive(
        model,
        embeddings,
        gt,
        image_index,
        _gen(0),
        schedule=[True],
        text_embeddings=text,
        use_text=use_text,
    )
    with torch.no_grad():
        logits, iou = model.decode(
            embeddings, text_embeddings=text[1:2], image_index=image_index[1:2]
        )
    torch.testing.assert_close(one_round["final_logits"][1, 0], logits[0, iou[0].argmax()])

    calls = _spy(model, monkeypatch)
    out = simulate_interactive(
        model,
        embeddings,
        gt,
        image_index,
        _gen(0),
        schedule=[True, True, False],
        text_embeddings=text,
        use_text=use_text,
    )
    assert first_prompts(gt, _gen(0)).use_box.tolist() == [True, False, True]
    # Rows 0 and 2 are box-first, row 1 text-first: two calls per round.
    assert len(calls) == 2 * 3
    text_calls = [call for call in calls if call.get("text_embeddings") is not None]
    assert len(text_calls) == 3
    for r, call in enumerate(text_calls):
        assert torch.equal(call["text_embeddings"], text[1:2]) and call["boxes"] is None
        assert call["image_index"].tolist() == [1]
        if r == 0:
            assert call["point_coords"] is None and call["multimask_output"] is True
        else:
            assert call["point_coords"].shape == (1, 1, 2) and call["multimask_output"] is False
    out["loss"].backward()
    assert model.prompt_encoder.text_projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="use_text"):
        simulate_interactive(model, embeddings, gt, image_index, _gen(0), use_text=use_text)
