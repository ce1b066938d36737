"""Our model against the official one: same random weights, same outputs within 1e-4."""

from __future__ import annotations

import copy

import pytest
import torch
from sam_test_models import SMALL

from sam_lightning.modeling.build import build_sam

TOL = {"atol": 1e-4, "rtol": 1e-4}
SIZE = SMALL["image_size"]
LOW_RES = 4 * (SIZE // 16)


def random_prompts(kinds: str, num: int, num_points: int = 3, seed: int = 0) -> dict:
    """Prompts in the input frame; ``kinds`` names them, e.g. ``"points+boxes"``."""
    g = torch.Generator().manual_seed(seed)
    prompts = {}
    if "points" in kinds:
        prompts["point_coords"] = torch.rand(num, num_points, 2, generator=g) * (SIZE - 1)
        prompts["point_labels"] = torch.randint(-1, 2, (num, num_points), generator=g)
    if "boxes" in kinds:
        corners = torch.rand(num, 2, 2, generator=g) * (SIZE - 1)
        prompts["boxes"] = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    if "masks" in kinds:
        prompts["mask_inputs"] = torch.randn(num, 1, LOW_RES, LOW_RES, generator=g) * 5
    return prompts


def official_prompt_args(prompts: dict) -> dict:
    points = None
    if "point_coords" in prompts:
        points = (prompts["point_coords"], prompts["point_labels"])
    return {"points": points, "boxes": prompts.get("boxes"), "masks": prompts.get("mask_inputs")}


def official_decode(official, embedding_1chw, prompts: dict, multimask: bool):
    """The official prompt encoder + mask decoder on one image's embedding."""
    sparse, dense = official.prompt_encoder(**official_prompt_args(prompts))
    return official.mask_decoder(
        image_embeddings=embedding_1chw,
        image_pe=official.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


@torch.no_grad()
def test_image_embeddings(small_pair, input_images):
    official, ours = small_pair
    batch = torch.stack([official.preprocess(image) for image in input_images])
    expected = official.image_encoder(batch)
    torch.testing.assert_close(ours.encode_images(input_images), expected, **TOL)
    torch.testing.assert_close(ours.encode_images(input_images[0][None]), expected[:1], **TOL)
    torch.testing.assert_close(ours.preprocess(input_images[1]), batch[1])


@pytest.mark.parametrize(
    "kinds", ["points", "boxes", "points+boxes", "masks", "points+masks", "none"]
)
@torch.no_grad()
def test_prompt_embeddings(small_pair, kinds):
    official, ours = small_pair
    args = official_prompt_args(random_prompts(kinds, num=3))
    expected_sparse, expected_dense = official.prompt_encoder(**args)
    sparse, dense = ours.prompt_encoder(**args)
    assert sparse.shape == expected_sparse.shape and dense.shape == expected_dense.shape
    torch.testing.assert_close(sparse, expected_sparse, **TOL)
    torch.testing.assert_close(dense, expected_dense, **TOL)
    torch.testing.assert_close(
        ours.prompt_encoder.get_dense_pe(), official.prompt_encoder.get_dense_pe(), **TOL
    )


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kinds", ["points", "points+boxes+masks"])
@torch.no_grad()
def test_mask_decoder(small_pair, multimask, kinds):
    official, ours = small_pair
    g = torch.Generator().manual_seed(1)
    embedding = torch.randn(1, 256, SIZE // 16, SIZE // 16, generator=g)
    sparse, dense = official.prompt_encoder(**official_prompt_args(random_prompts(kinds, 4)))
    args = (embedding, official.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
    expected_masks, expected_iou = official.mask_decoder(*args)
    masks, iou = ours.mask_decoder(*args)
    assert masks.shape == (4, 3 if multimask else 1, LOW_RES, LOW_RES)
    torch.testing.assert_close(masks, expected_masks, **TOL)
    torch.testing.assert_close(iou, expected_iou, **TOL)


FORWARD_SCENARIOS = {
    # name: (prompts of image 0, prompts of image 1, decoder calls expected)
    "points": (("points", 2), ("points", 3), 1),
    "boxes+masks": (("boxes+masks", 2), ("boxes+masks", 1), 1),
    "points+boxes/boxes": (("points+boxes", 2), ("boxes", 3), 2),
    "points+masks/none": (("points+masks", 2), ("none", 1), 2),
}


def batched_input(input_images, sample_images, scenario: str) -> list[dict]:
    records = []
    original_sizes = [sample_images["chelsea"].shape[:2], sample_images["coffee"].shape[1::-1]]
    for i, (kinds, num) in enumerate(FORWARD_SCENARIOS[scenario][:2]):
        prompts = random_prompts(kinds, num, num_points=2, seed=i)
        records.append({"image": input_images[i], "original_size": original_sizes[i], **prompts})
    return records


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("scenario", sorted(FORWARD_SCENARIOS))
@torch.no_grad()
def test_forward(small_pair, input_images, sample_images, scenario, multimask):
    official, ours = small_pair
    records = batched_input(input_images, sample_images, scenario)
    if scenario == "points+masks/none":  # batch-1 mask input broadcast over the prompts
        records[0]["mask_inputs"] = records[0]["mask_inputs"][:1]
    calls = {"encoder": 0, "decoder": 0}

    def counter(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    hooks = [
        ours.image_encoder.register_forward_hook(counter("encoder")),
        ours.mask_decoder.register_forward_hook(counter("decoder")),
    ]
    try:
        outputs = ours(records, multimask_output=multimask)
    finally:
        for hook in hooks:
            hook.remove()
    expected = official(records, multimask_output=multimask)
    assert calls == {"encoder": 1, "decoder": FORWARD_SCENARIOS[scenario][2]}
    for out, exp in zip(outputs, expected):
        assert out.keys() == exp.keys()
        torch.testing.assert_close(out["low_res_logits"], exp["low_res_logits"], **TOL)
        torch.testing.assert_close(out["iou_predictions"], exp["iou_predictions"], **TOL)
        assert out["masks"].dtype == torch.bool and out["masks"].shape == exp["masks"].shape
        assert (out["masks"] != exp["masks"]).float().mean() < 1e-5


@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_decode_with_image_index(small_pair, input_images, multimask):
    official, ours = small_pair
    embeddings = ours.encode_images(input_images)
    image_index = torch.tensor([1, 0, 1, 1, 0])
    prompts = random_prompts("points+boxes", len(image_index), num_points=2)
    low_res, iou = ours.decode(
        embeddings, **prompts, multimask_output=multimask, image_index=image_index
    )
    official_embeddings = official.image_encoder(
        torch.stack([official.preprocess(image) for image in input_images])
    )
    for image in (0, 1):
        rows = (image_index == image).nonzero()[:, 0]
        expected_low_res, expected_iou = official_decode(
            official,
            official_embeddings[image : image + 1],
            {key: value[rows] for key, value in prompts.items()},
            multimask,
        )
        torch.testing.assert_close(low_res[rows], expected_low_res, **TOL)
        torch.testing.assert_close(iou[rows], expected_iou, **TOL)


@torch.no_grad()
def test_decode_default_image_index(small_pair):
    _, ours = small_pair
    g = torch.Generator().manual_seed(2)
    embeddings = torch.randn(2, 256, SIZE // 16, SIZE // 16, generator=g)
    prompts = random_prompts("boxes", 2)

    def decode_indexed(*index: int):
        return ours.decode(embeddings, **prompts, image_index=torch.tensor(index))

    shared = ours.decode(embeddings[1:], **prompts)
    torch.testing.assert_close(shared, decode_indexed(1, 1))
    paired = ours.decode(embeddings, **prompts)
    torch.testing.assert_close(paired, decode_indexed(0, 1))
    assert not torch.allclose(paired[0], shared[0])

    no_prompt = ours.decode(embeddings, multimask_output=False)
    assert no_prompt[0].shape == (2, 1, LOW_RES, LOW_RES)
    with pytest.raises(ValueError, match="image_index"):
        ours.decode(embeddings, **random_prompts("boxes", 3))
    with pytest.raises(ValueError, match="image_index"):
        ours.decode(embeddings, **prompts, image_index=torch.tensor([0, 1, 1]))


def test_forward_is_differentiable(small_pair, input_images, sample_images):
    model = copy.deepcopy(small_pair[1]).train()
    records = batched_input(input_images, sample_images, "points+boxes/boxes")
    outputs = model(records, multimask_output=True)
    loss = sum(
        out["low_res_logits"].sigmoid().mean() + out["iou_predictions"].mean()
        for out in outputs
    )
    loss.backward()
    for param in (
        model.image_encoder.patch_embed.proj.weight,
        model.image_encoder.blocks[1].attn.rel_pos_h,
        model.prompt_encoder.point_embeddings[2].weight,
        model.mask_decoder.iou_token.weight,
        model.mask_decoder.output_hypernetworks_mlps[1].layers[0].weight,
    ):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


def test_preprocess_rejects_images_larger_than_input(small_pair):
    _, ours = small_pair
    with pytest.raises(ValueError, match="exceeds the input size 320"):
        ours.preprocess(torch.zeros(3, 321, 100))


@pytest.mark.parametrize("input_size", [(256, 256), (171, 256), (256, 1), (3, 200), (255, 254)])
def test_postprocess_masks_is_bitwise_the_full_upscaling(input_size):
    """Upscaling only the rows/columns that reach the input equals upscaling everything."""
    model = build_sam("vit_tiny", image_size=256)
    low_res = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    original = (input_size[0] * 3 + 1, input_size[1] * 2 + 5)
    full = torch.nn.functional.interpolate(low_res, (256, 256), mode="bilinear")
    full = full[..., : input_size[0], : input_size[1]]
    expected = torch.nn.functional.interpolate(full, original, mode="bilinear")
    assert torch.equal(model.postprocess_masks(low_res, input_size, original), expected)
