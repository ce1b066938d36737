"""Text prompts in SamPredictor (App. D.5): strings through the CLIP text encoder, alone or
with points and boxes, one or a batch; CLIP embeddings can be passed directly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.text_encoder import ClipEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from clip_test_models import save_tiny_clip  # noqa: E402

SIZE = 64
TEXTS = ["a red square", "the wheel", "x"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return ClipEncoder.from_pretrained(save_tiny_clip(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def predictor(clip):
    torch.manual_seed(0)
    model = build_sam("vit_tiny", image_size=SIZE, text_embed_dim=clip.embed_dim)
    predictor = SamPredictor(model, text_encoder=clip)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    return predictor


def test_one_text_gives_three_masks(predictor):
    masks, scores, low_res = predictor.predict(text="a red square")
    assert masks.shape == (3, 48, 40) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, SIZE // 4, SIZE // 4)


def test_a_batch_of_texts_equals_each_text_alone(predictor, clip):
    masks, scores, low_res = predictor.predict_torch(None, None, text=TEXTS)
    assert masks.shape == (3, 3, 48, 40) and scores.shape == (3, 3)
    for i, text in enumerate(TEXTS):
        _, single_scores, single_low = predictor.predict(text=text, return_logits=True)
        np.testing.assert_allclose(single_low, low_res[i].numpy(), atol=1e-5)
        np.testing.assert_allclose(single_scores, scores[i].numpy(), atol=1e-5)
    # Precomputed CLIP embeddings are the same prompt.
    _, _, from_embeddings = predictor.predict_torch(None, None, text=clip.encode_text(TEXTS))
    torch.testing.assert_close(from_embeddings, low_res)


def test_text_with_points_and_a_box(predictor):
    point = np.array([[20.0, 24.0]])
    box = np.array([5.0, 5.0, 35.0, 40.0])
    with_text = predictor.predict(point, np.array([1]), box=box, text="the wheel")
    without = predictor.predict(point, np.array([1]), box=box)
    assert with_text[0].shape == without[0].shape == (3, 48, 40)
    assert not np.allclose(with_text[2], without[2])


def test_text_prompt_errors(predictor, clip):
    with pytest.raises(ValueError, match="one text"):
        predictor.predict(text=["a", "b"])
    with pytest.raises(ValueError, match="batch sizes differ"):
        predictor.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), text=TEXTS)
    no_encoder = SamPredictor(predictor.model)
    no_encoder.set_image(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="text_encoder"):
        no_encoder.predict(text="a")
    plain = build_sam("vit_tiny", image_size=SIZE)
    with pytest.raises(ValueError, match="takes no text prompts"):
        SamPredictor(plain, text_encoder=clip)
    wider = build_sam("vit_tiny", image_size=SIZE, text_embed_dim=clip.embed_dim + 1)
    with pytest.raises(ValueError, match="wide"):
        SamPredictor(wider, text_encoder=clip)
