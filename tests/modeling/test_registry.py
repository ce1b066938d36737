"""Model registry: official state-dict layouts, full-size parity, configurable sizes."""

from __future__ import annotations

import time

import pytest
import torch
from sam_test_models import build_official, randomize_, resize_longest

from sam_lightning.modeling import build_sam, build_sam_custom, sam_model_registry


def layout(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_registry_matches_official_state_dict_layout(official, model_type):
    with torch.device("meta"):
        expected = layout(official.sam_model_registry[model_type]())
        ours = layout(sam_model_registry[model_type]())
        also_ours = layout(build_sam(model_type))
    assert ours == expected
    assert also_ours == expected


def test_image_size_is_configurable():
    with torch.device("meta"):
        model = build_sam("vit_b", image_size=512)
    assert model.image_encoder.pos_embed.shape == (1, 32, 32, 768)
    assert model.image_encoder.blocks[2].attn.rel_pos_h.shape == (63, 64)  # global block
    assert model.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)  # 14-token windows
    assert model.prompt_encoder.image_embedding_size == (32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_sam_custom(64, 1, 2, (0,), image_size=100)


def test_unknown_model_type_lists_choices():
    with pytest.raises(ValueError, match=r"vit_h.*vit_tiny|vit_b.*vit_l"):
        build_sam("vit_x")


@torch.no_grad()
def test_vit_tiny_runs(sample_images):
    model = build_sam("vit_tiny", image_size=256)
    image = resize_longest(sample_images["chelsea"], 256)
    box = torch.tensor([[10.0, 20, 200, 150]])
    (out,) = model(
        [{"image": image, "original_size": (300, 451), "boxes": box}], multimask_output=True
    )
    assert out["masks"].shape == (1, 3, 300, 451)
    assert out["low_res_logits"].shape == (1, 3, 64, 64)


@torch.no_grad()
def test_vit_b_matches_official(official, sample_images, tmp_path):
    reference = randomize_(official.build_sam_vit_b(), seed=3)
    path = tmp_path / "vit_b.pth"
    torch.save(reference.state_dict(), path)
    ours = sam_model_registry["vit_b"](checkpoint=path)  # the official calling convention
    path.unlink()
    image = resize_longest(sample_images["chelsea"], 1024)  # 681×1024: padded

    start = time.perf_counter()
    expected = reference.image_encoder(reference.preprocess(image)[None])
    official_s = time.perf_counter() - start
    start = time.perf_counter()
    embedding = ours.encode_images([image])
    ours_s = time.perf_counter() - start
    print(f"vit_b encoder on 1024²: official {official_s:.1f} s, ours {ours_s:.1f} s")
    torch.testing.assert_close(embedding, expected, atol=1e-4, rtol=1e-4)

    points = torch.tensor([[[500.0, 300.0], [120.0, 600.0]]])
    labels = torch.tensor([[1, 0]])
    sparse, dense = reference.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    expected_masks, expected_iou = reference.mask_decoder(
        expected, reference.prompt_encoder.get_dense_pe(), sparse, dense, True
    )
    masks, iou = ours.decode(embedding, points, labels, multimask_output=True)
    torch.testing.assert_close(masks, expected_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, expected_iou, atol=1e-4, rtol=1e-4)


#: vit_nano's sizes in build_official's terms.
NANO = {
    "encoder_embed_dim": 128,
    "encoder_depth": 4,
    "encoder_num_heads": 4,
    "encoder_global_attn_indexes": (1, 3),
    "patch_size": 8,
    "prompt_embed_dim": 128,
    "decoder_mlp_dim": 512,
    "decoder_num_heads": 4,
}


@torch.no_grad()
def test_vit_nano_is_the_official_architecture_at_its_sizes(sample_images, tmp_path):
    # Same state-dict layout and, with the same weights, the same outputs as the official
    # modules built with 8-pixel patches and a 128-wide decoder.
    reference = randomize_(build_official(**NANO, image_size=128), seed=5)
    with torch.device("meta"):
        assert layout(build_sam("vit_nano", image_size=128)) == layout(reference)
    path = tmp_path / "vit_nano.pth"
    torch.save(reference.state_dict(), path)
    ours = build_sam("vit_nano", checkpoint=path, image_size=128)
    assert ours.image_encoder.patch_embed.proj.kernel_size == (8, 8)
    assert ours.prompt_encoder.image_embedding_size == (16, 16)
    assert ours.prompt_encoder.mask_input_size == (64, 64)
    image = resize_longest(sample_images["coffee"], 128)
    expected = reference.image_encoder(reference.preprocess(image)[None])
    embedding = ours.encode_images([image])
    assert embedding.shape == (1, 128, 16, 16)
    torch.testing.assert_close(embedding, expected, atol=1e-4, rtol=1e-4)
    boxes = torch.tensor([[10.0, 20.0, 90.0, 70.0]])
    sparse, dense = reference.prompt_encoder(points=None, boxes=boxes, masks=None)
    expected_masks, expected_iou = reference.mask_decoder(
        expected, reference.prompt_encoder.get_dense_pe(), sparse, dense, True
    )
    masks, iou = ours.decode(embedding, boxes=boxes, multimask_output=True)
    assert masks.shape == (1, 3, 64, 64)
    torch.testing.assert_close(masks, expected_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, expected_iou, atol=1e-4, rtol=1e-4)
