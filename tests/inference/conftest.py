"""Fixtures for predictor tests: a small official SAM with random weights, the same weights in
our model, and both predictors with real non-square photos set."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from official_sam import import_official  # noqa: E402

from sam_lightning.inference import SamPredictor  # noqa: E402
from sam_lightning.modeling.build import build_sam_custom  # noqa: E402

#: Small encoder: 256-pixel input (16x16 embeddings, 64x64 low-res masks), width 64, depth 2.
SMALL = {"image_size": 256, "embed_dim": 64, "depth": 2, "num_heads": 2, "window_size": 4,
         "global_attn_indexes": (1,)}
IMAGES = {"chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}


def build_official_small(seed: int = 0) -> torch.nn.Module:
    """The official SAM with the :data:`SMALL` encoder, every weight and buffer random."""
    modeling = import_official().modeling
    size, grid = SMALL["image_size"], SMALL["image_size"] // 16
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=SMALL["depth"], embed_dim=SMALL["embed_dim"], img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=SMALL["num_heads"],
            patch_size=16, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=SMALL["global_attn_indexes"], window_size=SMALL["window_size"],
            out_chans=256,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        normalisation = {id(sam.pixel_mean), id(sam.pixel_std)}
        for tensor in [*sam.parameters(), *sam.buffers()]:
            if tensor.is_floating_point() and id(tensor) not in normalisation:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return sam


@pytest.fixture(scope="session")
def official():
    """The official ``segment_anything`` package."""
    return import_official()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """(official model, our model) with the same random weights, loaded from a saved file."""
    official_model = build_official_small()
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    torch.save(official_model.state_dict(), path)
    ours = build_sam_custom(
        SMALL["embed_dim"], SMALL["depth"], SMALL["num_heads"], SMALL["global_attn_indexes"],
        image_size=SMALL["image_size"], window_size=SMALL["window_size"], checkpoint=path,
    )
    return official_model, ours


@pytest.fixture(scope="session")
def images() -> dict[str, np.ndarray]:
    """Real non-square photos: chelsea 300x451, coffee 400x600."""
    return {name: load() for name, load in IMAGES.items()}


@pytest.fixture(scope="session")
def predictor_pairs(models, images, official):
    """Per image name: (official predictor, our predictor), both with the image set."""
    pairs = {}
    for name, image in images.items():
        reference, ours = official.SamPredictor(models[0]), SamPredictor(models[1])
        reference.set_image(image)
        ours.set_image(image)
        pairs[name] = (reference, ours)
    return pairs


@pytest.fixture(params=sorted(IMAGES))
def pair(request, predictor_pairs):
    """(official, ours) predictors for each test image."""
    return predictor_pairs[request.param]
