"""The text/CLIP prompt of the prompt encoder (App. D.5): one token from the ℓ2-normalised
CLIP embedding, combinable with points and boxes; official checkpoints load into a model
with a text prompt; models without it are unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam_lightning.modeling.build import TEXT_PROJECTION, build_sam
from sam_lightning.modeling.checkpoint import load_checkpoint, save_checkpoint

SIZE = 64
DIM = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam("vit_tiny", image_size=SIZE, text_embed_dim=DIM)


def test_models_without_text_have_no_text_weights():
    plain = build_sam("vit_tiny", image_size=SIZE)
    assert plain.prompt_encoder.text_embed_dim is None
    assert not any(key.startswith(TEXT_PROJECTION) for key in plain.state_dict())
    with pytest.raises(ValueError, match="text_embed_dim"):
        plain.prompt_encoder(None, None, None, text=torch.rand(1, DIM))


def test_the_text_token_is_the_projection_of_the_normalised_embedding(model):
    encoder = model.prompt_encoder
    text = torch.randn(3, DIM)
    sparse, dense = encoder(None, None, None, text=text)
    assert sparse.shape == (3, 1, encoder.embed_dim)
    projection = encoder.text_projection
    expected = F.normalize(text, dim=-1) @ projection.weight.T + projection.bias
    torch.testing.assert_close(sparse[:, 0], expected)
    # Only the direction counts.
    torch.testing.assert_close(encoder(None, None, None, text=5 * text)[0], sparse)
    no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(dense)
    torch.testing.assert_close(dense, no_mask)


def test_text_comes_before_points_and_boxes(model):
    encoder = model.prompt_encoder
    text = torch.randn(2, DIM)
    coords = torch.tensor([[[10.0, 20.0], [30.0, 5.0]]]).expand(2, -1, -1)
    labels = torch.tensor([[1, 0]]).expand(2, -1)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 50.0]]).expand(2, -1)
    points_only, _ = encoder((coords, labels), None, None)
    with_text, _ = encoder((coords, labels), None, None, text=text)
    assert with_text.shape[1] == 1 + points_only.shape[1]  # text + 2 points + padding
    torch.testing.assert_close(with_text[:, 1:], points_only)
    torch.testing.assert_close(with_text[:, :1], encoder(None, None, None, text=text)[0])
    all_three, _ = encoder((coords, labels), boxes, None, text=text)
    assert all_three.shape[1] == 1 + 2 + 2
    with pytest.raises(ValueError, match=f"B×{DIM}"):
        encoder(None, None, None, text=torch.randn(2, DIM + 1))


def test_decode_with_text_alone_and_with_points(model):
    with torch.no_grad():
        embeddings = model.encode_images(torch.rand(1, 3, SIZE, SIZE) * 255)
        text = torch.randn(4, DIM)
        logits, iou = model.decode(embeddings, text_embeddings=text)
        assert logits.shape == (4, 3, SIZE // 4, SIZE // 4) and iou.shape == (4, 3)
        coords = torch.rand(4, 1, 2) * SIZE
        labels = torch.ones(4, 1, dtype=torch.int)
        logits_pt, _ = model.decode(
            embeddings, coords, labels, text_embeddings=text, multimask_output=False
        )
        plain, _ = model.decode(embeddings, coords, labels, multimask_output=False)
    assert logits_pt.shape == (4, 1, SIZE // 4, SIZE // 4)
    assert not torch.allclose(logits_pt, plain)  # the text token changes the answer


def test_official_checkpoints_load_into_a_text_model(tmp_path):
    official = build_sam("vit_tiny", image_size=SIZE)
    with torch.no_grad():
        for parameter in official.parameters():
            parameter.add_(0.01)
    path = save_checkpoint(official, tmp_path / "official.pth", format="torch")
    torch.manual_seed(1)
    text_model = build_sam("vit_tiny", checkpoint=path, image_size=SIZE, text_embed_dim=DIM)
    torch.manual_seed(1)
    fresh = build_sam("vit_tiny", image_size=SIZE, text_embed_dim=DIM)
    state, reference = text_model.state_dict(), official.state_dict()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    for key in state:
        if key.startswith(TEXT_PROJECTION):  # not in the file: as initialised
            assert torch.equal(state[key], fresh.state_dict()[key]), key
    # Strict loading still names every other missing key.
    partial = dict(reference)
    del partial["mask_decoder.iou_token.weight"]
    partial_path = save_checkpoint(partial, tmp_path / "partial.pth", format="torch")
    with pytest.raises(ValueError, match="mask_decoder.iou_token.weight"):
        load_checkpoint(text_model, partial_path, may_be_missing=[TEXT_PROJECTION])
    # A text model's own checkpoint round-trips with its projection.
    saved = save_checkpoint(text_model, tmp_path / "text.pth", format="torch")
    again = build_sam("vit_tiny", checkpoint=saved, image_size=SIZE, text_embed_dim=DIM)
    for key, value in again.state_dict().items():
        assert torch.equal(value, state[key]), key
