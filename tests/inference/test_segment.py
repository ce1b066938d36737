"""The ``python -m sam_lightning.segment`` command on a small synthetic scene with vit_tiny."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_lightning import segment
from sam_lightning.file_io import read_image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from make_demo_image import draw_scene  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    draw_scene(96, 128).save(path)
    return path


def run_ok(argv: list[str], capsys) -> tuple[str, str]:
    assert segment.main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_points_and_boxes(scene, tmp_path, capsys, caplog):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "mask_07.png").write_bytes(b"stale")
    run_ok([str(scene), "--point", "30,30", "--point", "60,40,0",
                     "--box", "10,10,60,60", "--box", "60.5,15,120,55",
                     "--model-type", "vit_tiny", "--output", str(out_dir)], capsys)
    assert "random weights" in caplog.text and "sam_vit_b_01ec64.pth" in caplog.text
    document = json.loads((out_dir / "masks.json").read_text())
    records = document["masks"]
    assert [r["prompt"] for r in records] == [0, 1]  # two boxes, single mask each
    assert document["image_size"] == [96, 128] and document["boxes"][1] == [60.5, 15, 120, 55]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "mask_00.png", "mask_01.png", "masks.json", "overlay.png"
    ]
    for record in records:
        saved = np.array(Image.open(out_dir / record["file"]))
        assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
        rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
        decoded = mask_utils.decode(rle)
        np.testing.assert_array_equal(decoded * 255, saved)
        assert record["area"] == int(decoded.sum()) == int(mask_utils.area(rle))
        np.testing.assert_allclose(record["bbox"], mask_utils.toBbox(rle))
        assert isinstance(record["score"], float)
    overlay = np.array(Image.open(out_dir / "overlay.png"))
    assert overlay.shape == (96, 128, 3)
    assert (overlay[30, 30] == [0, 255, 0]).all() and (overlay[40, 60] == [255, 0, 0]).all()


def test_single_point_gives_three_masks(scene, tmp_path, capsys):
    out, _ = run_ok([str(scene), "--point", "30,30", "--model-type", "vit_tiny",
                     "--output", str(tmp_path)], capsys)
    assert sorted(p.name for p in tmp_path.glob("mask_*.png")) == [
        "mask_00.png", "mask_01.png", "mask_02.png"
    ]
    assert "overlay.png" in out
    run_ok([str(scene), "--point", "30,30", "--single-mask", "--model-type", "vit_tiny",
            "--output", str(tmp_path)], capsys)
    assert [p.name for p in tmp_path.glob("mask_*.png")] == ["mask_00.png"]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_segment_image_function(scene, tmp_path):
    records = segment.segment_image(scene, tmp_path, boxes=[(5, 5, 50, 50)], model_type="vit_tiny")
    assert len(records) == 1 and records[0]["file"] == "mask_00.png"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--point", "30;30"], "invalid point (expected X,Y or X,Y,LABEL) '30;30'"),
        (["--point", "3,4,5"], "must be 0 or 1"),
        (["--point", "nan,4"], "invalid point"),
        (["--box", "1,2,3"], "invalid box (expected X0,Y0,X1,Y1) '1,2,3'"),
        ([], "give at least one --point, --box or --text"),
        (["--point", "500,30"], "(500.0, 30.0) is outside the image of size W x H = 128 x 96"),
        (["--box", "50,10,40,20"], "must satisfy x0 <= x1"),
        (["--point", "1,1", "--checkpoint", "missing.pth"],
         "checkpoint file not found: missing.pth"),
        (["--point", "1,1", "--model-type", "vit_x"], "invalid choice: 'vit_x'"),
    ],
)
def test_bad_arguments_exit_2(scene, tmp_path, capsys, args, fragment):
    argv = [str(scene), *args, "--output", str(tmp_path)]
    if "--model-type" not in args:
        argv += ["--model-type", "vit_tiny"]
    with pytest.raises(SystemExit) as exit_info:
        segment.main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_missing_and_unreadable_image(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    with pytest.raises(SystemExit) as exit_info:
        segment.main([str(missing), "--point", "1,1", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"image file not found: {missing}" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(SystemExit):
        segment.main([str(text), "--point", "1,1", "--output", str(tmp_path)])
    assert f"cannot read image {text}" in capsys.readouterr().err


def test_a_checkpoint_trained_at_another_size_is_interpolated_with_a_warning(
    scene, tmp_path, capsys, caplog
):
    import torch

    from sam_lightning.modeling import build_sam, save_checkpoint

    path = tmp_path / "nano64.pth"
    save_checkpoint(build_sam("vit_nano", image_size=64), path)
    prompt = ["--box", "5,5,60,60", "--model-type", "vit_nano", "--checkpoint", str(path)]
    out, _ = run_ok([str(scene), *prompt, "--image-size", "64", "--output", str(tmp_path)], capsys)
    mask = np.array(Image.open(tmp_path / "mask_00.png"))
    assert mask.shape == (96, 128)  # back at the image's size
    document = json.loads((tmp_path / "masks.json").read_text())
    assert document["model_type"] == "vit_nano"
    # The default 1024: the weights are interpolated to it (README "Other input sizes"), and
    # the warning says so, naming both sizes.
    assert segment.main([str(scene), *prompt, "--output", str(tmp_path / "other")]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "interpolated to image_size=1024" in warning and "64 px" in warning
    assert torch.load(path, weights_only=True)["image_encoder.pos_embed"].shape[1] == 8


def test_text_prompts(scene, tmp_path, capsys):
    """--text (App. D.5) with a CLIP directory and a checkpoint that has a text projection:
    the texts are one batch and equal the predictor's own answers."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
    from clip_test_models import save_tiny_clip

    from sam_lightning.modeling.build import build_sam
    from sam_lightning.modeling.checkpoint import save_checkpoint

    clip_dir = save_tiny_clip(tmp_path / "clip")
    torch.manual_seed(3)
    model = build_sam("vit_tiny", image_size=64, text_embed_dim=16)
    checkpoint = save_checkpoint(model, tmp_path / "text_model.pth")
    common = ["--model-type", "vit_tiny", "--image-size", "64", "--checkpoint", str(checkpoint)]
    out_dir = tmp_path / "out"
    run_ok([str(scene), "--text", "a red disc", "--text", "the square", "--clip", str(clip_dir),
            *common, "--output", str(out_dir)], capsys)
    document = json.loads((out_dir / "masks.json").read_text())
    assert document["texts"] == ["a red disc", "the square"]
    assert [m["prompt"] for m in document["masks"]] == [0, 0, 0, 1, 1, 1]
    predictor = segment.build_predictor("vit_tiny", checkpoint, "cpu", 64, clip_dir)
    predictor.set_image(read_image(scene))
    masks, scores, _ = predictor.predict(text="the square")
    for k in range(3):
        saved = document["masks"][3 + k]
        assert saved["score"] == pytest.approx(float(scores[k]), abs=1e-4)
        rle = {"size": saved["segmentation"]["size"], "counts": saved["segmentation"]["counts"]}
        decoded = mask_utils.decode(rle).astype(bool)
        assert (decoded != masks[k]).mean() < 1e-2
    # With a point: one mask per text; texts need --clip; not with boxes.
    run_ok([str(scene), "--text", "a", "--text", "b", "--point", "30,30", "--clip",
            str(clip_dir), *common, "--output", str(tmp_path / "pt")], capsys)
    assert len(json.loads((tmp_path / "pt" / "masks.json").read_text())["masks"]) == 2
    for extra, fragment in ((["--text", "a"], "--clip"),
                            (["--text", "a", "--box", "1,1,9,9", "--clip", str(clip_dir)],
                             "not with boxes"),
                            (["--text", "a", "--clip", str(tmp_path)], "config.json")):
        with pytest.raises(SystemExit) as exit_info:
            segment.main([str(scene), *extra, *common, "--output", str(tmp_path / "bad")])
        assert exit_info.value.code == 2
        assert fragment in capsys.readouterr().err
