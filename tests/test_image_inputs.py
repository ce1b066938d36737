"""Image inputs that used to slip through (issue #20): 16-bit and 32-bit images, images over
the pixel limit (decompression bombs), extreme aspect ratios, and what ``segment`` and
``amg`` make of them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from image_fixtures import KEEP_ALL, png_header, sixteen_bit
from PIL import Image

from sam_lightning import amg, segment
from sam_lightning.entry_points import config_dir
from sam_lightning.file_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
)
from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling.build import build_sam
from sam_lightning.settings import amg as amg_settings

# ------------------------------------------------------------ extreme aspect ratios: model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam("vit_tiny", image_size=256)


@pytest.fixture(scope="module")
def generator(model) -> SamAutomaticMaskGenerator:
    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **KEEP_ALL)


def thin(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predictor_on_a_2000x3_image(model):
    predictor = SamPredictor(model)
    predictor.set_image(thin(2000, 3))
    assert predictor.input_size == (256, 1)  # the official code would make it (256, 0)
    masks, scores, low_res = predictor.predict(np.array([[1, 1000]]), np.array([1]))
    assert masks.shape == (3, 2000, 3) and scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.parametrize("shape", [(2000, 3), (3, 2000)])
def test_generator_on_an_image_a_few_pixels_wide(generator, shape):
    records = generator.generate(thin(*shape))
    assert len(records) == 48  # 16 points x 3 masks, nothing filtered
    assert all(r["segmentation"]["size"] == list(shape) for r in records)
    batched = generator.generate_batch([thin(*shape), thin(64, 48, seed=1)])
    assert [len(r) for r in batched] == [48, 48]


# -------------------------------------------------------------------------------- amg


@pytest.fixture
def folder(tmp_path) -> Path:
    """in/: normal.png 48x64 and thin.png 2000x3."""
    directory = tmp_path / "in"
    directory.mkdir()
    Image.fromarray(thin(48, 64, seed=1)).save(directory / "normal.png")
    Image.fromarray(thin(2000, 3)).save(directory / "thin.png")
    return directory


def test_generate_folder_writes_the_json_of_a_2000x3_image(folder, tmp_path, generator):
    out = tmp_path / "out"
    summary = amg.generate_folder(generator, folder, out, progress=False, num_workers=0)
    assert summary.completed and summary.failed == [] and summary.written == 2
    document = json.loads((out / "thin.json").read_text())
    assert (document["image"]["width"], document["image"]["height"]) == (3, 2000)
    assert len(document["annotations"]) == 48


@pytest.mark.parametrize("images_per_batch", [1, 2])
def test_an_image_the_generator_refuses_is_skipped_with_its_path(
    tmp_path, model, caplog, images_per_batch
):
    """With crop layers an image one pixel high (or, with amg=sa1b's two layers, one 2000x3)
    has empty crop windows, which the generator refuses: that image is listed as failed,
    the run goes on (a batch with it is redone image by image)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(thin(24, 32, seed=1)).save(folder / "normal.png")
    Image.fromarray(thin(1, 700)).save(folder / "line.png")
    crops = SamAutomaticMaskGenerator(
        model,
        output_mode="coco_rle",
        points_per_side=2,
        crop_n_layers=1,
        **{k: v for k, v in KEEP_ALL.items() if k != "points_per_side"},
    )
    with pytest.raises(ValueError, match="shape \\(0, 350, 3\\)"):
        crops.generate(thin(1, 700))  # what the generator does with it
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="sam_lightning.amg"):
        summary = amg.generate_folder(
            crops, folder, out, progress=False, num_workers=0, images_per_batch=images_per_batch
        )
    assert summary.completed and summary.written == 1
    assert (out / "normal.json").is_file() and not (out / "line.json").exists()
    assert [f["image"] for f in summary.failed] == [str(folder / "line.png")]
    assert "mask generation failed for this 700x1 image" in summary.failed[0]["error"]
    assert json.loads((out / "_summary.json").read_text())["failed"] == summary.failed
    assert f"skipping image {folder / 'line.png'}" in caplog.text


def test_other_generator_errors_still_stop_the_run(folder, tmp_path):
    class Broken:
        output_mode = "coco_rle"

        def generate(self, image):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        amg.generate_folder(Broken(), folder, tmp_path / "out", progress=False, num_workers=0)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_generate_folder_skips_an_image_over_max_image_pixels(
    folder, tmp_path, generator, num_workers
):
    out = tmp_path / "out"
    summary = amg.generate_folder(
        generator, folder, out, progress=False, num_workers=num_workers, max_image_pixels=5000
    )
    assert summary.completed and summary.written == 1 and (out / "normal.json").is_file()
    assert not (out / "thin.json").exists()  # 2000 x 3 = 6000 pixels > 5000
    assert [f["image"] for f in summary.failed] == [str(folder / "thin.png")]
    assert "6000 pixels, more than the limit of 5000" in summary.failed[0]["error"]
    summary = amg.generate_folder(
        generator,
        folder,
        tmp_path / "out2",
        progress=False,
        num_workers=num_workers,
        max_image_pixels=3000,
    )
    failed = {f["image"]: f["error"] for f in summary.failed}
    assert set(failed) == {str(folder / "normal.png"), str(folder / "thin.png")}
    assert "3072 pixels, more than the limit of 3000" in failed[str(folder / "normal.png")]
    assert "6000 pixels, more than the limit of 3000" in failed[str(folder / "thin.png")]


def compose_amg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("amg", overrides=["input=in", "output=out", *overrides])


def test_amg_config_max_image_pixels(folder, tmp_path, caplog):
    from omegaconf import OmegaConf

    cfg = compose_amg()
    assert cfg.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert amg_settings.check(OmegaConf.to_container(compose_amg("max_image_pixels=null"))) == []
    problems = amg_settings.check(OmegaConf.to_container(compose_amg("max_image_pixels=0")))
    assert problems == [
        "max_image_pixels=0: must be at least 1 (pixels per image, or null for no limit)"
    ]
    fast = [f"amg.{key}={value}" for key, value in KEEP_ALL.items()]
    fast += ["model.type=vit_tiny", "model.image_size=256", "device=cpu", "progress=false"]
    cfg = compose_amg(*fast, "max_image_pixels=3000", "num_workers=0")
    cfg.input, cfg.output = str(folder), str(tmp_path / "out")
    assert amg.run_from_config(cfg) == 1  # both images over the limit
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["completed"] and len(summary["failed"]) == 2
    assert "more than the limit of 3000" in summary["failed"][0]["error"]


# ------------------------------------------------------------------------------ segment


@pytest.fixture
def small_image(tmp_path) -> Path:
    path = tmp_path / "small.png"
    Image.fromarray(thin(24, 32, seed=5)).save(path)
    return path


def run_segment(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        segment.main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_segment_output_naming_a_file(small_image, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    code, err = run_segment([str(small_image), "--point", "3,3", "--output", str(taken)], capsys)
    assert code == 2 and f"--output {taken} is a file, not a directory" in err
    assert "Traceback" not in err
    inside = taken / "sub"
    code, err = run_segment([str(small_image), "--point", "3,3", "--output", str(inside)], capsys)
    assert code == 2 and f"is inside {taken}, which is a file" in err


@pytest.mark.parametrize("size", ["0", "-16", "abc"])
def test_segment_image_size_must_be_positive(small_image, tmp_path, capsys, size):
    argv = [str(small_image), "--point", "3,3", "--output", str(tmp_path / "o"), "--image-size"]
    code, err = run_segment([*argv, size], capsys)
    assert code == 2
    assert f"argument --image-size: expected a whole number >= 1, got '{size}'" in err


def test_segment_image_function_rejects_a_bad_image_size(small_image, tmp_path):
    with pytest.raises(ValueError, match="image_size must be a positive number of pixels"):
        segment.segment_image(small_image, tmp_path / "o", [(3, 3, 1)], image_size=0)


def test_segment_refuses_an_image_over_the_limit_in_one_line(small_image, tmp_path, capsys):
    argv = [str(small_image), "--point", "3,3", "--output", str(tmp_path / "o")]
    code, err = run_segment([*argv, "--max-image-pixels", "700"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"python -m sam_lightning.segment: error: cannot read image {small_image}: 768 pixels, "
        "more than the limit of 700 (a possible decompression bomb); raise the limit if the "
        "image is trusted: max_image_pixels=<pixels> or null (amg), --max-image-pixels "
        "<pixels> or none (segment)"
    ]
    assert not (tmp_path / "o").exists()
    code, err = run_segment([*argv, "--max-image-pixels", "0"], capsys)
    assert code == 2 and "argument --max-image-pixels: expected a whole number >= 1" in err


def test_segment_refuses_a_decompression_bomb(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))
    argv = [str(bomb), "--point", "3,3", "--output", str(tmp_path / "o")]
    code, err = run_segment(argv, capsys)
    assert code == 2 and "Traceback" not in err and "DecompressionBomb" not in err
    assert f"cannot read image {bomb}: 400000000 pixels, more than the limit of 89478485" in err
    code, err = run_segment([*argv, "--max-image-pixels", "none"], capsys)  # then: truncated
    assert code == 2 and f"cannot read image {bomb}" in err and "more than the limit" not in err


def test_segment_refuses_a_float_image(tmp_path, capsys):
    path = tmp_path / "float.tif"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(path)
    code, err = run_segment([str(path), "--point", "3,3", "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"cannot read image {path}: 32-bit floating-point samples (Pillow mode F)" in err


def test_segment_reads_a_16_bit_image(tmp_path, capsys):
    path = tmp_path / "grey16.png"
    Image.fromarray(sixteen_bit((24, 32))).save(path)
    out = tmp_path / "o"
    argv = [
        str(path),
        "--point",
        "3,3",
        "--output",
        str(out),
        "--model-type",
        "vit_tiny",
        "--image-size",
        "256",
    ]
    assert segment.main(argv) == 0
    document = json.loads((out / "masks.json").read_text())
    assert document["image_size"] == [24, 32]
    overlay = np.array(Image.open(out / "overlay.png"))
    masked = np.zeros((24, 32), bool)
    for record in document["masks"]:
        masked |= np.array(Image.open(out / record["file"])) > 0
    masked[:8, :8] = True  # the drawn point
    shifted = np.repeat((sixteen_bit((24, 32)) >> 8)[..., None], 3, axis=2).astype(np.uint8)
    np.testing.assert_array_equal(overlay[~masked], shifted[~masked])  # the image shows there
