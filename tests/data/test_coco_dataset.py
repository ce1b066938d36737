"""CocoDataset and LvisDataset on small generated COCO/LVIS files, checked against pycocotools."""

from __future__ import annotations

import inspect
import json
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sam_lightning.data.coco import CocoDataset, LvisDataset
from sam_lightning.data.sa1b_dataset import decode_masks
from sam_lightning.data.samples import SampleTransform, SkipBadSamples, TransformedDataset
from sam_lightning.file_io import CocoFormatError

mask_api = pytest.importorskip("pycocotools.mask")
coco_api = pytest.importorskip("pycocotools.coco")
# pycocotools 2.0.x's decode passes copy=False to NumPy 2's __array__: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
H, W = 40, 48  # the RGB image
GH, GW = 30, 36  # the grayscale image


def rgb_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def disc(height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (counts a list, column-major, starting with background)."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def annotation(ann_id: int, image_id: int, segmentation: Any, **extra: Any) -> dict[str, Any]:
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": segmentation,
        "area": 50.0,
        "bbox": [0.0, 0.0, 5.0, 5.0],
        "iscrowd": 0,
    }
    ann.update(extra)
    return ann


def coco_document() -> dict[str, Any]:
    """Image 1 (RGB PNG): two-part polygon, uncompressed RLE, compressed RLE, a crowd RLE.
    Image 2 (grayscale PNG): a polygon. Image 3 (JPEG): only a crowd. Image 4: nothing."""
    return {
        "info": {"description": "test"},
        "images": [
            {"id": 1, "width": W, "height": H, "file_name": "rgb.png"},
            {"id": 2, "width": GW, "height": GH, "file_name": "sub/gray.png"},
            {"id": 3, "width": 20, "height": 16, "file_name": "crowd.jpg"},
            {"id": 4, "width": 20, "height": 16, "file_name": "empty.jpg"},
        ],
        "annotations": [
            annotation(
                10,
                1,
                [[2, 3, 20, 3, 20, 15, 2, 15], [30.5, 20.25, 44.0, 22.0, 36.75, 38.5]],
                area=300.0,
            ),
            annotation(11, 1, uncompressed_rle(disc(H, W, 25, 12, 7)), category_id=2),
            annotation(12, 1, compressed_rle(disc(H, W, 10, 35, 6)), area=110),
            annotation(13, 1, uncompressed_rle(disc(H, W, 30, 30, 9)), iscrowd=1),
            annotation(20, 2, [[1, 1, 30, 2, 15, 25]]),
            annotation(30, 3, uncompressed_rle(disc(16, 20, 8, 10, 5)), iscrowd=1),
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }


def write_images(root: Path) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    rgb = rgb_image(H, W, 0)
    gray = np.random.default_rng(1).integers(0, 256, (GH, GW), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(gray, mode="L").save(root / "sub" / "gray.png")
    Image.fromarray(rgb_image(16, 20, 2)).save(root / "crowd.jpg", quality=90)
    Image.fromarray(rgb_image(16, 20, 3)).save(root / "empty.jpg", quality=90)
    return {"rgb": rgb, "gray": gray}


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """(annotation file, image directory, the images written)."""
    images = write_images(tmp_path / "images")
    return write_json(tmp_path / "instances.json", coco_document()), tmp_path / "images", images


def reference_masks(annotation_file: Path, ann_ids: list[int]) -> np.ndarray:
    """pycocotools' own COCO.annToMask of the annotations (N x H x W bool)."""
    api = coco_api.COCO(str(annotation_file))
    return np.stack([api.annToMask(api.anns[i]) for i in ann_ids]).astype(bool)


# ------------------------------------------------------------------------------ reading


def test_items_match_pycocotools_ann_to_mask(coco):
    annotation_file, image_dir, _ = coco
    dataset = CocoDataset(annotation_file, image_dir)
    assert len(dataset) == 2  # image 3 has only a crowd, image 4 nothing
    assert [dataset.image_info(i)["image_id"] for i in range(2)] == [1, 2]
    expected_ids = [[10, 11, 12], [20]]
    for index, ids in enumerate(expected_ids):
        item = dataset[index]
        assert [ann["id"] for ann in item["annotations"]] == ids
        reference = reference_masks(annotation_file, ids)
        assert reference.any(axis=(1, 2)).all()  # the fixture's masks are not empty
        for ann, ref in zip(item["annotations"], reference):
            rle = ann["segmentation"]
            assert isinstance(rle["counts"], str)
            assert rle["size"] == list(ref.shape)
            # pycocotools decoding of the converted RLE, and the project's decode_masks.
            decoded = mask_api.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            np.testing.assert_array_equal(decoded.astype(bool), ref)
        masks = decode_masks(item["annotations"])
        assert masks.dtype == torch.bool
        np.testing.assert_array_equal(masks.numpy(), reference)


def test_items_equal_frpyobjects_decode(coco):
    """The conversion is pycocotools.mask.decode(frPyObjects(...)) (merged for polygons)."""
    annotation_file, image_dir, _ = coco
    document = coco_document()
    item = CocoDataset(annotation_file, image_dir)[0]
    by_id = {ann["id"]: ann for ann in document["annotations"]}
    polygon = mask_api.decode(mask_api.merge(mask_api.frPyObjects(by_id[10]["segmentation"], H, W)))
    uncompressed = mask_api.decode(mask_api.frPyObjects(by_id[11]["segmentation"], H, W))
    for ann, ref in zip(item["annotations"][:2], (polygon, uncompressed)):
        np.testing.assert_array_equal(decode_masks([ann])[0].numpy(), ref.astype(bool))
    # The compressed RLE is passed through unchanged.
    assert item["annotations"][2]["segmentation"] == by_id[12]["segmentation"]


def test_items_keep_the_annotation_fields_and_image_info(coco):
    annotation_file, image_dir, _ = coco
    dataset = CocoDataset(annotation_file, image_dir)
    item = dataset[1]
    ann = item["annotations"][0]
    assert (ann["category_id"], ann["area"], ann["bbox"], ann["iscrowd"]) == (
        1,
        50.0,
        [0.0, 0.0, 5.0, 5.0],
        0,
    )
    assert item["image_info"] == {
        "image_id": 2,
        "width": GW,
        "height": GH,
        "file_name": "sub/gray.png",
    }
    assert str(image_dir / "sub" / "gray.png") in item["source"]
    assert str(annotation_file) in item["source"]
    assert dataset.source(1) == item["source"]
    assert dataset.image_path(-1) == image_dir / "sub" / "gray.png"
    assert dataset.read_annotations(1) == item["annotations"]
    with pytest.raises(IndexError, match="out of range"):
        dataset[2]


def test_rgb_image_and_grayscale_converted_to_rgb(coco):
    annotation_file, image_dir, images = coco
    dataset = CocoDataset(annotation_file, image_dir)
    rgb, gray = dataset[0]["image"], dataset[1]["image"]
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb, images["rgb"])
    assert gray.dtype == np.uint8 and gray.shape == (GH, GW, 3)
    for channel in range(3):
        np.testing.assert_array_equal(gray[..., channel], images["gray"])


def test_crowd_annotations_skipped_by_default(coco):
    annotation_file, image_dir, _ = coco
    default = CocoDataset(annotation_file, image_dir)
    ids = {ann["id"] for i in range(len(default)) for ann in default[i]["annotations"]}
    assert ids == {10, 11, 12, 20}

    with_crowd = CocoDataset(annotation_file, image_dir, skip_crowd=False)
    assert len(with_crowd) == 3
    assert [ann["id"] for ann in with_crowd[0]["annotations"]] == [10, 11, 12, 13]
    crowd_item = with_crowd[2]
    assert crowd_item["image_info"]["image_id"] == 3
    assert crowd_item["image"].shape == (16, 20, 3)
    np.testing.assert_array_equal(
        decode_masks(crowd_item["annotations"]).numpy(), reference_masks(annotation_file, [30])
    )


def test_min_area_and_category_filters(coco):
    annotation_file, image_dir, _ = coco
    large = CocoDataset(annotation_file, image_dir, min_area=100)
    assert len(large) == 1  # image 2's only annotation has area 50
    assert [ann["id"] for ann in large[0]["annotations"]] == [10, 12]
    other = CocoDataset(annotation_file, image_dir, category_ids=[2])
    assert len(other) == 1
    assert [ann["id"] for ann in other[0]["annotations"]] == [11]
    with pytest.raises(ValueError, match=r"category_ids \[7\]"):
        CocoDataset(annotation_file, image_dir, category_ids=[1, 7])


def test_missing_area_and_bbox_computed_from_the_mask(tmp_path):
    write_images(tmp_path / "images")
    document = coco_document()
    mask = disc(H, W, 10, 35, 6)
    ann = annotation(12, 1, compressed_rle(mask))
    del ann["area"], ann["bbox"]
    document["annotations"] = [ann]
    annotation_file = write_json(tmp_path / "a.json", document)
    item = CocoDataset(annotation_file, tmp_path / "images")[0]
    ys, xs = np.nonzero(mask)
    assert item["annotations"][0]["area"] == int(mask.sum())
    expected_box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert item["annotations"][0]["bbox"] == [float(v) for v in expected_box]
    # min_area applies to the computed area too.
    too_small = CocoDataset(annotation_file, tmp_path / "images", min_area=int(mask.sum()) + 1)
    assert too_small[0]["annotations"] == []


def test_dataset_pickles_with_its_index(coco):
    annotation_file, image_dir, _ = coco
    dataset = CocoDataset(annotation_file, image_dir)
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == len(dataset)
    assert copy.read_annotations(0) == dataset.read_annotations(0)
    assert isinstance(dataset._buffer, np.ndarray) and dataset._buffer.dtype == np.uint8


# ------------------------------------------------------------------------------- errors


def test_missing_annotation_file_or_image_directory(tmp_path, coco):
    annotation_file, image_dir, _ = coco
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset(tmp_path / "nope.json", image_dir)
    with pytest.raises(FileNotFoundError, match="no_images"):
        CocoDataset(annotation_file, tmp_path / "no_images")


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (lambda d: d.pop("images"), "images", "missing"),
        (lambda d: d.pop("annotations"), "annotations", "missing"),
        (lambda d: d.update(images={}), "images", "expected a list"),
        (lambda d: d["images"][1].pop("height"), "images[1].height", "missing"),
        (lambda d: d["images"][1].pop("file_name"), "images[1].file_name", "missing"),
        (lambda d: d["images"][2].update(id=1), "images[2].id", r"1 repeats the id of images\[0\]"),
        (
            lambda d: d["annotations"][4].update(image_id=99),
            "annotations[4] (id 20).image_id",
            "no image has id 99",
        ),
        (
            lambda d: d["annotations"][4].pop("image_id"),
            "annotations[4] (id 20).image_id",
            "missing",
        ),
        (
            lambda d: d["annotations"][4].update(id=10),
            "annotations[4] (id 10).id",
            r"10 repeats the id of annotations\[0\]",
        ),
        (
            lambda d: d["annotations"][4].update(iscrowd=2),
            "annotations[4] (id 20).iscrowd",
            "0 or 1",
        ),
    ],
)
def test_structural_problems_raise_at_construction(tmp_path, change, field, problem):
    write_images(tmp_path / "images")
    document = coco_document()
    change(document)
    annotation_file = write_json(tmp_path / "bad.json", document)
    with pytest.raises(CocoFormatError, match=problem) as error:
        CocoDataset(annotation_file, tmp_path / "images")
    assert error.value.file == str(annotation_file)
    assert error.value.field == field
    assert str(annotation_file) in str(error.value)


def test_invalid_json_raises_naming_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    annotation_file = tmp_path / "broken.json"
    annotation_file.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="not valid JSON") as error:
        CocoDataset(annotation_file, tmp_path / "images")
    assert error.value.file == str(annotation_file)


@pytest.mark.parametrize(
    ("segmentation", "field", "problem"),
    [
        (7, "segmentation", "expected polygons"),
        ("abc", "segmentation", "expected polygons"),
        ([], "segmentation", "empty list"),
        ([1, 2, 3, 4, 5, 6], "segmentation[0]", "expected a polygon"),
        ([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]], "segmentation[1]", "odd number"),
        ([[1, 2, 3, 4]], "segmentation[0]", r"2 points; a polygon needs >= 3"),
        ([[1, 2, 3, "x", 5, 6]], "segmentation[0]", "must be numbers"),
        ({"size": [H, W]}, "segmentation", "an RLE"),
        ({"size": [H + 1, W], "counts": "abc"}, "segmentation.size", "differs"),
        ({"size": [W, H], "counts": [H * W]}, "segmentation.size", "differs"),
        ({"size": [H, W], "counts": [5, 6]}, "segmentation.counts", "sum to 11"),
        ({"size": [H, W], "counts": [H * W - 1, -1]}, "segmentation.counts", ">= 0"),
        ({"size": [H, W], "counts": 5}, "segmentation.counts", "a string or a list"),
    ],
)
def test_bad_segmentation_raises_when_the_item_is_read(tmp_path, segmentation, field, problem):
    write_images(tmp_path / "images")
    document = coco_document()
    document["annotations"][1] = annotation(77, 1, segmentation)
    annotation_file = write_json(tmp_path / "bad.json", document)
    dataset = CocoDataset(annotation_file, tmp_path / "images")  # constructs
    assert dataset[1]["image_info"]["image_id"] == 2  # other images are fine
    with pytest.raises(CocoFormatError, match=problem) as error:
        dataset[0]
    assert error.value.file == str(annotation_file)
    assert error.value.field == f"annotations[1] (id 77).{field}"
    assert str(annotation_file) in str(error.value) and "id 77" in str(error.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda a: a.pop("segmentation"), "segmentation"),
        (lambda a: a.update(area=-1), "area"),
        (lambda a: a.update(area="big"), "area"),
        (lambda a: a.update(bbox=[1, 2, 3]), "bbox"),
    ],
)
def test_bad_annotation_fields_raise_when_read(tmp_path, change, field):
    write_images(tmp_path / "images")
    document = coco_document()
    change(document["annotations"][2])
    annotation_file = write_json(tmp_path / "bad.json", document)
    dataset = CocoDataset(annotation_file, tmp_path / "images")
    with pytest.raises(CocoFormatError) as error:
        dataset[0]
    assert error.value.field == f"annotations[2] (id 12).{field}"


def test_missing_image_raises_file_not_found_naming_the_path(coco):
    annotation_file, image_dir, _ = coco
    (image_dir / "sub" / "gray.png").unlink()
    dataset = CocoDataset(annotation_file, image_dir)
    assert dataset[0]["image"].shape == (H, W, 3)
    with pytest.raises(FileNotFoundError, match="gray.png") as error:
        dataset[1]
    assert str(image_dir / "sub" / "gray.png") in str(error.value)


def test_image_of_another_size_raises(tmp_path):
    write_images(tmp_path / "images")
    document = coco_document()
    document["images"][1]["width"] = GW + 1  # the polygon of image 2 is still valid
    annotation_file = write_json(tmp_path / "a.json", document)
    with pytest.raises(CocoFormatError, match="height x width") as error:
        CocoDataset(annotation_file, tmp_path / "images")[1]
    assert "image_id 2" in error.value.field


def test_missing_pycocotools_says_how_to_install(coco, monkeypatch):
    annotation_file, image_dir, _ = coco
    dataset = CocoDataset(annotation_file, image_dir, category_ids=[1])
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        dataset[0]  # a polygon
    # Compressed RLEs need no pycocotools.
    document = coco_document()
    document["annotations"] = [document["annotations"][2]]
    only_rle = CocoDataset(write_json(annotation_file.with_name("rle.json"), document), image_dir)
    assert [ann["id"] for ann in only_rle[0]["annotations"]] == [12]


# ----------------------------------------------------------------------------------- LVIS


def lvis_document() -> dict[str, Any]:
    document = coco_document()
    document["images"] = [
        {"id": 1, "width": W, "height": H, "coco_url": "http://x.org/train2017/rgb.png"},
        {"id": 2, "width": GW, "height": GH, "coco_url": "http://x.org/val2017/gray.png"},
        {"id": 3, "width": 20, "height": 16, "coco_url": "http://x.org/val2017/absent.jpg"},
    ]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != 3]
    document["annotations"].append(annotation(40, 3, [[1, 1, 10, 1, 5, 8]]))
    for ann in document["annotations"]:
        ann.pop("iscrowd", None)
    return document


def test_lvis_file_names_from_coco_url(tmp_path):
    root = tmp_path / "coco"
    images = write_images(tmp_path / "flat")
    (root / "train2017").mkdir(parents=True)
    Image.fromarray(images["rgb"]).save(root / "train2017" / "rgb.png")  # images/<split>/<name>
    Image.fromarray(images["gray"], mode="L").save(root / "gray.png")  # images/<name>
    annotation_file = write_json(tmp_path / "lvis_v1_val.json", lvis_document())
    dataset = LvisDataset(annotation_file, root)
    assert len(dataset) == 3
    assert dataset.image_info(0)["file_name"] == "train2017/rgb.png"
    first, second = dataset[0], dataset[1]
    assert first["image_info"]["file_name"] == "train2017/rgb.png"
    assert second["image_info"]["file_name"] == "gray.png"
    assert dataset.image_path(1) == root / "gray.png"
    np.testing.assert_array_equal(first["image"], images["rgb"])
    assert second["image"].shape == (GH, GW, 3)
    # All four annotations of image 1 (LVIS has no iscrowd), masks as pycocotools decodes them.
    ids = [ann["id"] for ann in first["annotations"]]
    assert ids == [10, 11, 12, 13]
    np.testing.assert_array_equal(
        decode_masks(first["annotations"]).numpy(), reference_masks(annotation_file, ids)
    )
    with pytest.raises(FileNotFoundError) as error:
        dataset[2]
    message = str(error.value)
    assert str(root / "val2017" / "absent.jpg") in message and str(root / "absent.jpg") in message


def test_lvis_image_without_coco_url_raises(tmp_path):
    (tmp_path / "images").mkdir()
    document = lvis_document()
    del document["images"][1]["coco_url"]
    annotation_file = write_json(tmp_path / "lvis.json", document)
    with pytest.raises(CocoFormatError, match="missing") as error:
        LvisDataset(annotation_file, tmp_path / "images")
    assert error.value.field == "images[1].coco_url"
    # A COCO file read as LVIS uses file_name (LVIS v0.5 images have one).
    coco_file = write_json(tmp_path / "coco.json", coco_document())
    write_images(tmp_path / "images")
    assert LvisDataset(coco_file, tmp_path / "images")[1]["image_info"]["file_name"] == (
        "sub/gray.png"
    )


# ------------------------------------------------------------------------------ training


def test_item_passes_through_train_transform(coco):
    annotation_file, image_dir, _ = coco
    dataset = CocoDataset(annotation_file, image_dir)
    transform = SampleTransform(image_size=64, max_masks=8)
    sample = transform(dataset[0], np.random.default_rng(0))
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    assert sample["original_size"] == (H, W)
    assert sample["input_size"] == (53, 64)  # 40 x 48 -> longest side 64
    assert sorted(sample["annotation_ids"].tolist()) == [10, 11, 12]
    assert sample["masks"].shape == (3, 64, 64)
    assert sample["masks"][:, 53:].sum() == 0  # padding is empty
    assert sample["masks"].flatten(1).any(1).all()
    assert sample["source"] == dataset.source(0)


def test_skip_bad_samples_skips_an_image_with_a_broken_annotation(tmp_path, caplog):
    write_images(tmp_path / "images")
    document = coco_document()
    document["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5, 6, 7]]  # odd
    annotation_file = write_json(tmp_path / "broken.json", document)
    dataset = CocoDataset(annotation_file, tmp_path / "images")
    samples = SkipBadSamples(
        TransformedDataset(dataset, SampleTransform(image_size=64, max_masks=8))
    )
    with caplog.at_level(logging.WARNING):
        sample = samples[0]
    assert samples.skipped == 1
    assert sample["source"] == dataset.source(1)  # the next image
    assert sample["annotation_ids"].tolist() == [20]
    assert str(tmp_path / "images" / "rgb.png") in caplog.text
    assert "annotations[0] (id 10).segmentation[0]" in caplog.text
    assert samples[1]["source"] == dataset.source(1)
    assert samples.skipped == 1


# ------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(("name", "cls"), [("coco", CocoDataset), ("lvis", LvisDataset)])
def test_data_configs_match_the_dataset_arguments(name, cls):
    from omegaconf import OmegaConf

    config = OmegaConf.load(CONF / f"{name}.yaml")
    parameters = inspect.signature(cls).parameters
    for split in ("train", "val"):
        spec = config[split]
        assert spec.get("kind", config.train.kind) == name  # a val spec inherits the kind
        assert OmegaConf.is_missing(spec, "annotations") and OmegaConf.is_missing(spec, "images")
        arguments = set(spec) - {"kind"}
        assert arguments <= set(parameters)
        for key in arguments - {"annotations", "images"}:
            assert spec[key] == parameters[key].default
