"""Other input sizes: weights made for 1024 loaded into models of 512 and 768, interpolated
as SAMed's ``load_from`` does (reimplemented here as the reference), bit-identical at equal
sizes; the predictor, the mask generator and the evaluation harness on such a model; and
the mismatches that stay errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from image_fixtures import KEEP_ALL
from omegaconf import OmegaConf
from PIL import Image
from sam_test_models import randomize_

from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling import build_sam, load_checkpoint, save_checkpoint
from sam_lightning.modeling.image_encoder import get_rel_pos
from sam_lightning.modeling.image_size import (
    adapt_to_model,
    checkpoint_image_size,
    resize_pos_embed,
    resize_rel_pos,
)
from sam_lightning.transforms import ResizeLongestSide

VIT_B_GLOBAL = (2, 5, 8, 11)
TINY_GLOBAL = (1, 3)
LOGGER = "sam_lightning.modeling.image_size"


def samed_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """SAMed's ``load_from``: the position embedding resized bilinearly."""
    pos_embed = pos_embed.permute(0, 3, 1, 2)
    pos_embed = F.interpolate(pos_embed, (grid, grid), mode="bilinear", align_corners=False)
    return pos_embed.permute(0, 2, 3, 1)


def samed_rel_pos(table: torch.Tensor, grid: int) -> torch.Tensor:
    """SAMed's ``load_from``: the ``L×C`` table resized bilinearly to ``(2*grid-1)×C``."""
    _, width = table.shape
    resized = F.interpolate(
        table[None, None], (grid * 2 - 1, width), mode="bilinear", align_corners=False
    )
    return resized[0, 0]


def rel_pos_keys(index: int) -> list[str]:
    return [f"image_encoder.blocks.{index}.attn.rel_pos_{axis}" for axis in ("h", "w")]


# ------------------------------------------------------------------------------- vit_b


@pytest.fixture(scope="session")
def vit_b_file(tmp_path_factory, official) -> Path:
    """An official vit_b (the official builder) with every weight and buffer random."""
    model = randomize_(official.sam_model_registry["vit_b"](), seed=11)
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vit_b_weights(vit_b_file) -> dict[str, torch.Tensor]:
    return torch.load(vit_b_file, map_location="cpu", weights_only=True)


def test_vit_b_at_1024_is_bit_identical(vit_b_file, vit_b_weights, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    model = build_sam("vit_b", vit_b_file)
    plain = build_sam("vit_b")
    load_checkpoint(plain, vit_b_file)  # without the adapt hook: as before
    ours, reference = model.state_dict(), plain.state_dict()
    assert ours.keys() == vit_b_weights.keys()
    for key, value in vit_b_weights.items():
        assert torch.equal(ours[key], value) and torch.equal(reference[key], value), key
    adapted = adapt_to_model(vit_b_weights, model)
    assert all(adapted[key] is value for key, value in vit_b_weights.items())
    assert not caplog.records


@pytest.mark.parametrize("size", [512, 768])
def test_vit_b_interpolated_as_samed(vit_b_file, vit_b_weights, size, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    model = build_sam("vit_b", vit_b_file, image_size=size)
    grid = size // 16
    ours = model.state_dict()
    pos_embed = ours["image_encoder.pos_embed"]
    assert pos_embed.shape == (1, grid, grid, 768)
    assert torch.equal(pos_embed, samed_pos_embed(vit_b_weights["image_encoder.pos_embed"], grid))
    tables = {key for i in range(12) for key in rel_pos_keys(i)}
    for i in range(12):
        for key in rel_pos_keys(i):
            found = vit_b_weights[key]
            if i not in VIT_B_GLOBAL:  # windowed: 2 * 14 - 1 rows at every size
                assert found.shape == (27, 64) and torch.equal(ours[key], found), key
                continue
            assert found.shape == (127, 64) and ours[key].shape == (2 * grid - 1, 64), key
            torch.testing.assert_close(ours[key], samed_rel_pos(found, grid), rtol=1e-6, atol=1e-6)
            # what get_rel_pos gathers at run time from the 1024 table, bit for bit
            assert torch.equal(get_rel_pos(grid, grid, ours[key]), get_rel_pos(grid, grid, found))
    for key, value in vit_b_weights.items():
        if key != "image_encoder.pos_embed" and key not in tables:
            assert torch.equal(ours[key], value), key
    (record,) = caplog.records
    message = record.getMessage()
    assert str(vit_b_file) in message and "1024 px" in message
    assert f"image_size={size}" in message and "blocks 2, 5, 8, 11" in message


# ------------------------------------------------------------------ the interpolations


@pytest.mark.parametrize(("length", "grid"), [(127, 32), (127, 48), (127, 128), (27, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_rel_pos_resize_equals_samed_bilinear(length, grid, dtype):
    """The 1-D linear resize equals SAMed's bilinear one of the ``L×C`` table (the channel
    axis keeps its size); the two kernels may round the last bit differently."""
    table = torch.randn(length, 64, generator=torch.Generator().manual_seed(length), dtype=dtype)
    ours = resize_rel_pos(table, 2 * grid - 1)
    assert ours.shape == (2 * grid - 1, 64) and ours.dtype == dtype and ours.is_contiguous()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(ours, samed_rel_pos(table, grid), rtol=tolerance, atol=tolerance)
    assert torch.equal(get_rel_pos(grid, grid, ours), get_rel_pos(grid, grid, table))


def test_half_precision_weights_are_interpolated_in_float32():
    pos_embed = torch.randn(1, 8, 8, 16).to(torch.bfloat16)
    resized = resize_pos_embed(pos_embed, 4)
    assert resized.dtype == torch.bfloat16 and resized.shape == (1, 4, 4, 16)
    expected = samed_pos_embed(pos_embed.float(), 4).to(torch.bfloat16)
    assert torch.equal(resized, expected)
    table = torch.randn(15, 8).to(torch.float16)
    assert resize_rel_pos(table, 7).dtype == torch.float16


def test_checkpoint_image_size():
    pos = "image_encoder.pos_embed"
    assert checkpoint_image_size({pos: torch.zeros(1, 64, 64, 8)}, 16) == 1024
    assert checkpoint_image_size({pos: torch.zeros(1, 8, 8, 8)}, 8) == 64
    assert checkpoint_image_size({"x.pos_embed": torch.zeros(1, 4, 4, 8)}, 16, "x.pos_embed") == 64
    assert checkpoint_image_size({}, 16) is None
    assert checkpoint_image_size({pos: torch.zeros(1, 64, 32, 8)}, 16) is None
    assert checkpoint_image_size({pos: torch.zeros(2, 64, 64, 8)}, 16) is None
    assert checkpoint_image_size({pos: torch.zeros(64, 64, 8)}, 16) is None


# ---------------------------------------------------------------------------- vit_tiny


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    """Our vit_tiny at 1024 with every weight and buffer random."""
    return randomize_(build_sam("vit_tiny"), seed=5).state_dict()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_weights) -> Path:
    return save_checkpoint(tiny_weights, tmp_path_factory.mktemp("tiny") / "tiny_1024.pth")


@pytest.fixture(scope="module")
def tiny_512(tiny_file):
    return build_sam("vit_tiny", tiny_file, image_size=512)


def test_tiny_shapes_and_round_trips(tiny_file, tiny_weights, tiny_512, tmp_path):
    ours = tiny_512.state_dict()
    assert ours["image_encoder.pos_embed"].shape == (1, 32, 32, 128)
    for i in range(4):
        for key in rel_pos_keys(i):
            assert ours[key].shape == ((63, 32) if i in TINY_GLOBAL else (27, 32)), key
            if i not in TINY_GLOBAL:
                assert torch.equal(ours[key], tiny_weights[key]), key
    # a 512 file loads bit-identically at 512, and back into 1024
    path = save_checkpoint(tiny_512, tmp_path / "tiny_512.safetensors")
    again = build_sam("vit_tiny", path, image_size=512).state_dict()
    assert all(torch.equal(again[key], value) for key, value in ours.items())
    assert checkpoint_image_size(again, 16) == 512
    back = build_sam("vit_tiny", path).state_dict()
    assert back["image_encoder.pos_embed"].shape == (1, 64, 64, 128)
    assert back["image_encoder.blocks.1.attn.rel_pos_h"].shape == (127, 32)


@pytest.mark.parametrize("prefix", ["model.", "model._orig_mod."])
def test_a_training_checkpoint_is_interpolated(tiny_weights, tiny_512, tmp_path, prefix, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    path = tmp_path / "last.ckpt"
    state = {prefix + key: value for key, value in tiny_weights.items()}
    state["criterion.pos_weight"] = torch.ones(1)
    torch.save({"epoch": 1, "global_step": 10, "state_dict": state}, path)
    model = build_sam("vit_tiny", path, image_size=512)
    expected = tiny_512.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    assert "last.ckpt" in caplog.text


def test_the_patch_size_comes_from_the_model(tmp_path):
    """vit_nano has 8-pixel patches: its 64-pixel file is an 8×8 grid, 16×16 at 128."""
    weights = randomize_(build_sam("vit_nano", image_size=64), seed=2).state_dict()
    path = save_checkpoint(weights, tmp_path / "nano_64.pth")
    model = build_sam("vit_nano", path, image_size=128).state_dict()
    assert torch.equal(
        model["image_encoder.pos_embed"], samed_pos_embed(weights["image_encoder.pos_embed"], 16)
    )
    for key in rel_pos_keys(1):  # global: 2 * 8 - 1 -> 2 * 16 - 1 rows
        torch.testing.assert_close(model[key], samed_rel_pos(weights[key], 16), rtol=0, atol=1e-6)
    assert torch.equal(model["image_encoder.blocks.0.attn.rel_pos_h"], weights[rel_pos_keys(0)[0]])


# ---------------------------------------------------------------- predicting at 512


def test_predictor_at_512(tiny_512):
    image = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny_512)
    assert predictor.transform.target_length == 512
    predictor.set_image(image)
    assert predictor.input_size == ResizeLongestSide.get_preprocess_shape(300, 451, 512)
    assert max(predictor.input_size) == 512
    assert predictor.get_image_embedding().shape == (1, 256, 32, 32)
    masks, scores, low_res = predictor.predict(
        point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1])
    )
    assert masks.shape == (3, 300, 451) and scores.shape == (3,)
    assert low_res.shape == (3, 128, 128)  # 4 × 32
    masks, _, low_res = predictor.predict(
        point_coords=np.array([[200.0, 150.0]]),
        point_labels=np.array([1]),
        mask_input=low_res[:1],
        multimask_output=False,
    )
    assert masks.shape == (1, 300, 451) and low_res.shape == (1, 128, 128)


def test_mask_generator_at_512(tiny_512):
    image = np.random.default_rng(1).integers(0, 256, (200, 330, 3), dtype=np.uint8)
    records = SamAutomaticMaskGenerator(tiny_512, **KEEP_ALL).generate(image)
    assert records
    assert all(record["segmentation"].shape == (200, 330) for record in records)


def test_build_model_of_the_entry_points_interpolates(tiny_file, tiny_512):
    from sam_lightning.entry_points import build_model

    model = build_model("vit_tiny", tiny_file, image_size=512)
    assert model.image_encoder.img_size == 512 and not model.training
    expected = tiny_512.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def write_coco(root: Path) -> Path:
    """One 96×128 image with two rectangles, in COCO's layout (compressed RLEs)."""
    from sam_lightning.ops import rle_encode

    masks = np.zeros((2, 96, 128), dtype=bool)
    masks[0, 10:40, 10:60] = masks[1, 50:90, 70:120] = True
    image = np.full((96, 128, 3), 120, dtype=np.uint8)
    image[masks[0]], image[masks[1]] = (250, 30, 30), (20, 20, 230)
    Image.fromarray(image).save(root / "1.png")
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": {"size": [96, 128], "counts": rle["counts"].decode()},
            "area": float(mask.sum()),
            "iscrowd": 0,
        }
        for i, (mask, rle) in enumerate(zip(masks, rle_encode(masks)))
    ]
    document = {
        "images": [{"id": 1, "width": 128, "height": 96, "file_name": "1.png"}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "box"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(document))
    return path


def test_points_harness_at_512_from_a_1024_checkpoint(tiny_file, tmp_path, caplog):
    from sam_lightning.entry_points import config_dir
    from sam_lightning.evaluate import evaluate

    caplog.set_level(logging.INFO, LOGGER)
    data = tmp_path / "coco"
    data.mkdir()
    overrides = [
        "+eval=points_coco",
        "model=vit_tiny",
        "model.image_size=512",
        f"model.checkpoint={tiny_file}",
        f"data.images={data}",
        f"data.annotations={write_coco(data)}",
        "eval.num_clicks=[1,2]",
        "device=cpu",
        "progress=false",
        "logger.kind=none",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        config = OmegaConf.to_container(compose("evaluate", overrides=overrides), resolve=True)
    run_dir = tmp_path / "run"
    metrics = evaluate(config, run_dir)
    assert metrics["num_objects"] == 2 and 0.0 <= metrics["miou_1pt"] <= 1.0
    manifest = json.loads((run_dir / "_progress" / "manifest.json").read_text())
    assert manifest["manifest"]["model"]["image_size"] == 512
    assert "image_size=512" in caplog.text and str(tiny_file) in caplog.text


# ------------------------------------------------------------------------------ errors


def test_another_model_type_is_still_an_error(tiny_file, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    with pytest.raises(ValueError, match="wrong shapes") as info:
        build_sam("vit_b", tiny_file, image_size=512)
    message = str(info.value)
    assert str(tiny_file) in message and "missing keys" in message
    assert (
        "image_encoder.pos_embed (checkpoint (1, 64, 64, 128), model (1, 32, 32, 768))" in message
    )
    assert not caplog.records  # nothing was interpolated


@pytest.mark.parametrize("size", [1024, 512])
def test_a_window_table_of_another_length_is_an_error(tiny_weights, tmp_path, size):
    weights = dict(tiny_weights)
    weights["image_encoder.blocks.0.attn.rel_pos_h"] = torch.zeros(13, 32)
    path = save_checkpoint(weights, tmp_path / "window_7.pth")
    with pytest.raises(ValueError) as info:
        build_sam("vit_tiny", path, image_size=size)
    message = str(info.value)
    assert "wrong shapes (1): image_encoder.blocks.0.attn.rel_pos_h" in message
    assert "(checkpoint (13, 32), model (27, 32))" in message


def test_a_global_table_of_another_length_is_an_error(tiny_weights, tmp_path):
    weights = dict(tiny_weights)
    weights["image_encoder.blocks.3.attn.rel_pos_w"] = torch.zeros(99, 32)
    path = save_checkpoint(weights, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"wrong shapes \(1\)") as info:
        build_sam("vit_tiny", path, image_size=512)
    assert "blocks.3.attn.rel_pos_w (checkpoint (99, 32), model (63, 32))" in str(info.value)


def test_no_or_a_non_square_pos_embed_is_an_error(tiny_weights, tmp_path):
    weights = dict(tiny_weights)
    del weights["image_encoder.pos_embed"]
    path = save_checkpoint(weights, tmp_path / "no_pos.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): image_encoder.pos_embed") as info:
        build_sam("vit_tiny", path, image_size=512)
    # nothing is interpolated without it: the global tables keep the file's length
    assert "blocks.1.attn.rel_pos_h (checkpoint (127, 32), model (63, 32))" in str(info.value)
    weights["image_encoder.pos_embed"] = torch.zeros(1, 64, 32, 128)
    path = save_checkpoint(weights, tmp_path / "not_square.pth")
    with pytest.raises(ValueError) as info:
        build_sam("vit_tiny", path, image_size=512)
    message = str(info.value)
    assert (
        "image_encoder.pos_embed (checkpoint (1, 64, 32, 128), model (1, 32, 32, 128))" in message
    )
    assert "blocks.1.attn.rel_pos_h (checkpoint (127, 32), model (63, 32))" in message
