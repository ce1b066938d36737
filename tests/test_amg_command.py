"""The data-engine command ``python -m sam_lightning.amg``: the library functions with the real
generator (vit_tiny, random weights, 256-pixel encoder), resume, failures, list files, the
Hydra configs and one run of the command in a subprocess."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from sam_lightning import amg
from sam_lightning.data import SA1BDataset, decode_masks, make_sa1b_document, sa1b_image_id
from sam_lightning.entry_points import config_dir
from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
from sam_lightning.modeling.build import build_sam

REPO = Path(__file__).resolve().parents[1]
#: Thresholds that keep every mask of the random-weight model (no NMS).
KEEP_ALL = {
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A few flat-coloured rectangles on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height - 10), rng.integers(0, width - 10)
        image[y : y + rng.integers(8, 30), x : x + rng.integers(8, 40)] = rng.integers(0, 256, 3)
    return image


@pytest.fixture(scope="module")
def generator() -> SamAutomaticMaskGenerator:
    torch.manual_seed(0)
    model = build_sam("vit_tiny", image_size=256)
    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **KEEP_ALL)


class Recording:
    """Wraps a generator: records the image sizes it sees, fails on call ``fail_at``."""

    output_mode = "coco_rle"

    def __init__(self, generator, fail_at: int | None = None) -> None:
        self.generator, self.fail_at, self.calls = generator, fail_at, []

    def generate(self, image):
        if len(self.calls) == self.fail_at:
            raise RuntimeError("killed")
        self.calls.append(image.shape[:2])
        return self.generator.generate(image)


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/: a.png 64x96, b.jpg 48x80, sa_12.png 72x64 (and a text file)."""
    directory = tmp_path / "photos"
    directory.mkdir()
    Image.fromarray(scene(64, 96, 0)).save(directory / "a.png")
    Image.fromarray(scene(48, 80, 1)).save(directory / "b.jpg", quality=95)
    Image.fromarray(scene(72, 64, 2)).save(directory / "sa_12.png")
    (directory / "notes.txt").write_text("not an image")
    return directory


def outputs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def test_folder_end_to_end(photos, tmp_path, generator):
    out = tmp_path / "out"
    summary = amg.generate_folder(generator, photos, out, progress=False)

    assert outputs(out) == ["_summary.json", "a.json", "b.json", "sa_12.json"]
    assert (summary.images, summary.written, summary.skipped, summary.failed) == (3, 3, 0, [])
    assert summary.completed and summary.image_root == str(photos)
    assert json.loads((out / "_summary.json").read_text()) == summary.to_dict()
    dataset = SA1BDataset(out, image_root=photos)
    assert len(dataset) == 3
    ids = []
    for sample, stem in zip(dataset, ["a", "b", "sa_12"]):
        info, annotations = sample["image_info"], sample["annotations"]
        path = next(photos.glob(f"{stem}.*"))
        image = np.array(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(sample["image"], image)
        assert info == {
            "image_id": sa1b_image_id(stem),
            "width": image.shape[1],
            "height": image.shape[0],
            "file_name": path.name,
        }
        expected = make_sa1b_document(
            generator.generate(image), info["image_id"], image.shape[1], image.shape[0], path.name
        )
        assert sample["annotations"] == expected["annotations"]  # the generator's records
        assert len(annotations) == 48  # 16 points x 3 masks, nothing filtered
        masks = decode_masks(annotations)
        assert masks.shape == (48, *image.shape[:2]) and masks.any()
        assert [a["area"] for a in annotations] == masks.sum((1, 2)).tolist()
        ids += [a["id"] for a in annotations]
    assert dataset[2]["image_info"]["image_id"] == 12  # sa_<n> keeps n
    assert len(set(ids)) == len(ids) == summary.masks == 144


def test_unreadable_images_are_reported_and_skipped(photos, tmp_path, generator, caplog):
    (photos / "c.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = (photos / "a.png").read_bytes()
    (photos / "d.png").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="sam_lightning.amg"):
        summary = amg.generate_folder(generator, photos, out, progress=False)

    assert outputs(out) == ["_summary.json", "a.json", "b.json", "sa_12.json"]
    assert summary.written == 3 and summary.completed
    assert [f["image"] for f in summary.failed] == [str(photos / "c.jpg"), str(photos / "d.png")]
    assert "not an image" in summary.failed[0]["error"]
    assert "truncated" in summary.failed[1]["error"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"skipping image {photos / 'c.jpg'}" in m for m in errors)
    assert any("2 image(s) skipped" in m and "d.png" in m for m in errors)
    on_disk = json.loads((out / "_summary.json").read_text())
    assert on_disk["failed"] == summary.failed


def test_resume_after_interruption(photos, tmp_path, generator):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        amg.generate_folder(Recording(generator, fail_at=2), photos, out, progress=False)
    assert outputs(out) == ["_summary.json", "a.json", "b.json"]
    interrupted = json.loads((out / "_summary.json").read_text())
    assert not interrupted["completed"] and interrupted["written"] == 2
    done = {name: (out / name).stat().st_mtime_ns for name in ("a.json", "b.json")}
    leftover = out / ".sa_12.json.0123456789ab.tmp"  # a write killed before its rename
    leftover.write_text('{"image": ')

    rerun = Recording(generator)
    summary = amg.generate_folder(rerun, photos, out, progress=False)
    assert rerun.calls == [(72, 64)]  # only sa_12.png
    assert (summary.skipped, summary.written, summary.failed) == (2, 1, [])
    assert {name: (out / name).stat().st_mtime_ns for name in done} == done
    assert not leftover.exists()
    assert outputs(out) == ["_summary.json", "a.json", "b.json", "sa_12.json"]
    assert len(SA1BDataset(out, image_root=photos)) == 3


def test_broken_output_is_redone(photos, tmp_path, generator, caplog):
    out = tmp_path / "out"
    amg.generate_folder(generator, photos, out, progress=False)
    (out / "b.json").write_text('{"image": {}, "annotations": []}')
    rerun = Recording(generator)
    with caplog.at_level(logging.WARNING, logger="sam_lightning.amg"):
        summary = amg.generate_folder(rerun, photos, out, progress=False)
    assert rerun.calls == [(48, 80)] and summary.written == 1 and summary.skipped == 2
    assert f"recomputing {out / 'b.json'}" in caplog.text
    assert len(SA1BDataset(out, image_root=photos)[1]["annotations"]) == 48


def test_list_file_input(photos, tmp_path, generator):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(scene(40, 40, 5)).save(elsewhere / "far.png")
    listing = photos / "list.txt"
    listing.write_text(f"# images\nb.jpg\n\n  a.png  \n{elsewhere / 'far.png'}\nmissing.png\n")
    out = tmp_path / "out"
    summary = amg.generate_folder(generator, listing, out, progress=False)

    assert outputs(out) == ["_summary.json", "a.json", "b.json", "far.json"]
    assert summary.images == 4 and summary.written == 3
    assert summary.failed == [
        {
            "image": str(photos / "missing.png"),
            "error": f"image file not found: {photos / 'missing.png'}",
        }
    ]
    dataset = SA1BDataset(out, image_root=photos)
    names = [dataset.read_annotations(i)["image"]["file_name"] for i in range(3)]
    assert names == ["a.png", "b.jpg", (elsewhere / "far.png").resolve().as_posix()]
    np.testing.assert_array_equal(dataset[2]["image"], scene(40, 40, 5))


def test_single_image_and_recursive_input(photos, tmp_path, generator):
    out = tmp_path / "one"
    summary = amg.generate_folder(generator, photos / "a.png", out, progress=False)
    assert summary.written == 1 and outputs(out) == ["_summary.json", "a.json"]

    nested = photos / "trip" / "day1"
    nested.mkdir(parents=True)
    Image.fromarray(scene(32, 48, 9)).save(nested / "a.png")  # same stem, another folder
    inside = photos / "masks"  # the output inside the input is never read as input
    inside.mkdir()
    Image.fromarray(scene(32, 48, 9)).save(inside / "stray.png")
    flat = amg.generate_folder(generator, photos, inside, progress=False)
    assert flat.images == 3 and flat.written == 3  # not recursive: trip/ ignored
    summary = amg.generate_folder(generator, photos, inside, recursive=True, progress=False)
    assert summary.images == 4 and summary.written == 1 and summary.skipped == 3
    assert (inside / "trip" / "day1" / "a.json").is_file()
    dataset = SA1BDataset(inside, image_root=photos, recursive=True)
    assert [dataset[i]["image_info"]["file_name"] for i in range(len(dataset))] == [
        "a.png",
        "b.jpg",
        "sa_12.png",
        "trip/day1/a.png",
    ]
    assert dataset[3]["image_info"]["image_id"] == sa1b_image_id("trip/day1/a")


def test_bad_inputs(photos, tmp_path, generator):
    with pytest.raises(FileNotFoundError, match="input not found"):
        amg.collect_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images .* \(subdirectories need recursive=true\)"):
        amg.collect_images(tmp_path / "empty")
    Image.fromarray(scene(20, 20, 0)).save(photos / "a.jpg")
    with pytest.raises(ValueError, match="share an output file.*a.jpg.*a.png"):
        amg.collect_images(photos)
    binary = SamAutomaticMaskGenerator(generator.predictor.model, points_per_side=2)
    with pytest.raises(ValueError, match="output_mode='coco_rle'"):
        amg.generate_folder(binary, photos, tmp_path / "out")


def test_run_amg_builds_the_configured_generator(photos, tmp_path, monkeypatch, caplog):
    built = {}
    original = amg.build_generator

    def spy(*args, **kwargs):
        built["generator"] = original(*args, **kwargs)
        return built["generator"]

    monkeypatch.setattr(amg, "build_generator", spy)
    grids = [[[0.25, 0.5], [0.75, 0.5]], [[0.5, 0.5]]]
    with caplog.at_level(logging.WARNING, logger="sam_lightning.amg"):
        summary = amg.run_amg(
            photos / "a.png",
            tmp_path / "out",
            model_type="vit_tiny",
            device="cpu",
            progress=False,
            image_size=256,
            points_per_side=None,
            point_grids=grids,
            crop_n_layers=1,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            min_mask_region_area=5,
        )
    assert "random weights and the masks are meaningless" in caplog.text
    generator = built["generator"]
    assert generator.output_mode == "coco_rle" and generator.crop_n_layers == 1
    assert generator.min_mask_region_area == 5
    np.testing.assert_array_equal(generator.point_grids[0], grids[0])
    assert generator.predictor.model.image_encoder.img_size == 256
    assert summary.written == 1 and summary.masks > 0
    with pytest.raises(ValueError, match=r"unknown generator options \['output_mode'\]"):
        amg.build_generator("vit_tiny", device="cpu", output_mode="binary_mask")
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        amg.build_generator("vit_tiny", device="gpu0")


# ----------------------------------------------------------------------------- configs


def compose_amg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("amg", overrides=["input=in", "output=out", *overrides])


def test_default_config_matches_the_official_generator():
    cfg = compose_amg()
    assert cfg.model.type == "vit_h" and cfg.model.checkpoint is None and cfg.device == "auto"
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(SamAutomaticMaskGenerator).parameters.items()
        if name not in ("model", "output_mode")
    }
    assert set(cfg.amg) == set(defaults)
    for name, value in defaults.items():
        assert cfg.amg[name] == (value if value is None else pytest.approx(value)), name


def test_sa1b_preset():
    cfg = compose_amg("amg=sa1b")
    expected = {
        "points_per_side": 32,
        "crop_n_layers": 2,
        "crop_n_points_downscale_factor": 2,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "crop_nms_thresh": 0.7,
        "max_mask_area_fraction": 0.95,
        "min_mask_region_area": 100,
        "points_per_batch": 64,
        "point_grids": None,
        "crop_overlap_ratio": pytest.approx(512 / 1500),
    }
    assert dict(cfg.amg) == expected
    generator = SamAutomaticMaskGenerator(build_sam("vit_tiny", image_size=256), **cfg.amg)
    assert [len(grid) for grid in generator.point_grids] == [32 * 32, 16 * 16, 8 * 8]


def test_run_from_config_exit_status(photos, tmp_path, caplog):
    fast = [f"amg.{key}={value}" for key, value in KEEP_ALL.items()]
    fast += ["model.type=vit_tiny", "model.image_size=256", "device=cpu", "progress=false"]
    cfg = compose_amg(*fast)
    cfg.input, cfg.output = str(tmp_path / "missing"), str(tmp_path / "out")
    assert amg.run_from_config(cfg) == 2
    assert "input not found" in caplog.text
    cfg.input = str(photos / "a.png")
    assert amg.run_from_config(cfg) == 0
    (photos / "z.png").write_bytes(b"broken")
    cfg.input = str(photos)
    assert amg.run_from_config(cfg) == 1


def test_command_line(photos, tmp_path):
    (photos / "c.jpg").write_bytes(b"broken")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam_lightning.amg",
            f"input={photos}",
            f"output={out}",
            "model.type=vit_tiny",
            "model.image_size=256",
            "device=cpu",
            "amg.points_per_side=4",
            "amg.pred_iou_thresh=0",
            "amg.stability_score_thresh=0",
            "amg.box_nms_thresh=1.0",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    assert f"skipping image {photos / 'c.jpg'}" in log and "random weights" in log
    assert outputs(out) == ["_summary.json", "a.json", "b.json", "sa_12.json"]
    assert list(cwd.iterdir()) == []  # nothing written to the working directory
    run_dir = out / "_logs"  # the same directory for every rank and every rerun
    assert (run_dir / "amg.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert "c.jpg" in (run_dir / "amg.log").read_text()
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["written"] == 3 and summary["masks"] == 144 and summary["completed"]


def test_command_line_without_output(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sam_lightning.amg", "input=photos", "amg=sa1b"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: set output=..., e.g.")
    assert list(tmp_path.iterdir()) == []


def test_a_multirun_that_would_start_processes_itself_is_refused(photos, tmp_path):
    """Lightning's launcher re-runs sys.argv, -m included: each child would rerun the sweep."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam_lightning.amg",
            "-m",
            f"input={photos}",
            f"output={tmp_path / 'out'}",
            "model.type=vit_tiny",
            "accelerator=cpu",
            "devices=2",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-2000:]
    assert "devices=2 in a multirun would make every child process re-run" in log
    assert "Initializing distributed" not in log
