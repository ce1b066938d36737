"""SA-1B annotation files: writer, validation, and SA1BDataset over directories, the
extracted SA-1B layout and SA-1B tar archives (small generated fixtures)."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam_lightning.data import sa1b
from sam_lightning.data.sa1b import (
    SA1BFormatError,
    annotation_id,
    make_sa1b_document,
    read_sa1b_json,
    sa1b_image_id,
    write_sa1b_json,
)
from sam_lightning.data.sa1b_dataset import SA1BDataset, decode_masks
from sam_lightning.ops import rle_decompress, rle_encode


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_masks(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """``count`` masks of random rectangles and discs (N x H x W bool)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    masks = np.zeros((count, height, width), dtype=bool)
    for mask in masks:
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        mask[y0 : y0 + rng.integers(2, height // 2), x0 : x0 + rng.integers(2, width // 2)] = True
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(2, 9)
        mask |= (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2
    return masks


def generator_records(masks: np.ndarray) -> list[dict]:
    """Records as SamAutomaticMaskGenerator(output_mode="coco_rle") returns them, with the
    NumPy number types a generator might use."""
    records = []
    for i, rle in enumerate(rle_encode(masks)):
        ys, xs = np.nonzero(masks[i])
        records.append(
            {
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": np.int64(masks[i].sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)), int(np.ptp(ys))],
                "predicted_iou": np.float32(0.5 + i / 100),
                "point_coords": [[float(xs[0]), float(ys[0])]],
                "stability_score": 0.9,
                "crop_box": np.array([0, 0, masks.shape[2], masks.shape[1]]),
            }
        )
    return records


def official_document(image_id: int, masks: np.ndarray, file_name: str) -> dict:
    """An SA-1B release document (annotation ids as SA-1B numbers them: arbitrary ints)."""
    height, width = masks.shape[1:]
    document = make_sa1b_document(
        generator_records(masks),
        image_id,
        width,
        height,
        file_name,
        annotation_ids=[1000 * image_id + i for i in range(len(masks))],
    )
    return json.loads(json.dumps(document))


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def release(tmp_path) -> dict[int, tuple[bytes, np.ndarray, dict]]:
    """Three SA-1B-style samples: id -> (JPEG bytes, masks, JSON document)."""
    samples = {}
    for n, (height, width) in zip((1, 23, 7), ((24, 32), (16, 16), (30, 20))):
        masks = random_masks(n % 5 + 2, height, width, seed=n)
        jpeg = encode_jpeg(random_image(height, width, seed=n))
        samples[n] = (jpeg, masks, official_document(n, masks, f"sa_{n}.jpg"))
    return samples


def extract(release, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for n, (jpeg, _, document) in release.items():
        (directory / f"sa_{n}.jpg").write_bytes(jpeg)
        (directory / f"sa_{n}.json").write_text(json.dumps(document))
    return directory


def make_tar(release, path: Path, prefix: str = "./") -> Path:
    """An uncompressed tar as SA-1B ships them: sa_<n>.jpg, sa_<n>.json, ... per image."""
    with tarfile.open(path, "w") as tar:
        for n, (jpeg, _, document) in release.items():
            for name, data in ((f"sa_{n}.jpg", jpeg), (f"sa_{n}.json", json.dumps(document))):
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def check_samples(dataset: SA1BDataset, release) -> None:
    assert len(dataset) == len(release)
    ids = []
    for i in range(len(dataset)):
        sample = dataset[i]
        n = sample["image_info"]["image_id"]
        ids.append(n)
        jpeg, masks, document = release[n]
        np.testing.assert_array_equal(sample["image"], decoded(jpeg))
        assert sample["image"].dtype == np.uint8 and sample["image"].shape[2] == 3
        assert sample["image_info"] == document["image"]
        assert sample["annotations"] == document["annotations"]
        np.testing.assert_array_equal(decode_masks(sample["annotations"]).numpy(), masks)
        assert sample["source"].endswith(f"sa_{n}.json")
    assert ids == [1, 23, 7]  # sorted by file name (directories) or archive order (tars)


# ----------------------------------------------------------------------------- writer


def test_writer_reader_round_trip(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    image = random_image(40, 56, seed=3)
    Image.fromarray(image).save(images / "street.png")
    masks = random_masks(5, 40, 56, seed=3)
    image_id = sa1b_image_id("street")
    document = make_sa1b_document(generator_records(masks), image_id, 56, 40, "street.png")
    path = write_sa1b_json(out / "street.json", document)

    assert sorted(os.listdir(out)) == ["street.json"]  # no temporary file left
    on_disk = json.loads(path.read_text())
    assert on_disk == document == read_sa1b_json(path)
    first = on_disk["annotations"][0]
    assert set(first) == {
        "id",
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "point_coords",
        "stability_score",
        "crop_box",
    }
    assert first["predicted_iou"] == pytest.approx(0.5) and first["crop_box"] == [0, 0, 56, 40]
    assert [a["id"] for a in on_disk["annotations"]] == [image_id * 2**16 + i for i in range(5)]

    dataset = SA1BDataset(out, image_root=images)
    sample = dataset[0]
    np.testing.assert_array_equal(sample["image"], image)
    assert sample["image_info"] == {
        "image_id": image_id,
        "width": 56,
        "height": 40,
        "file_name": "street.png",
    }
    decoded_masks = decode_masks(sample["annotations"])
    assert decoded_masks.dtype == torch.bool
    np.testing.assert_array_equal(decoded_masks.numpy(), masks)
    np.testing.assert_array_equal(
        decode_masks(sample["annotations"], [3, 1]).numpy(), masks[[3, 1]]
    )
    assert decode_masks(sample["annotations"], [], size=(40, 56)).shape == (0, 40, 56)


def test_writer_compresses_uncompressed_rles():
    masks = random_masks(2, 12, 10, seed=1)
    records = generator_records(masks)
    runs = rle_decompress(records[0]["segmentation"]["counts"])
    records[0]["segmentation"] = {"size": [12, 10], "counts": np.array(runs)}
    document = make_sa1b_document(records, 5, 10, 12, "x.png")
    assert (
        document["annotations"][0]["segmentation"]["counts"]
        == rle_encode(masks[0])[0]["counts"].decode()
    )
    np.testing.assert_array_equal(decode_masks(document["annotations"]).numpy(), masks)


def test_write_is_atomic(tmp_path, monkeypatch):
    masks = random_masks(2, 12, 10, seed=1)
    path = tmp_path / "x.json"
    path.write_text("old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(sa1b.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_sa1b_json(path, make_sa1b_document(generator_records(masks), 1, 10, 12, "x.png"))
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda r: r[1].pop("stability_score"), "annotations[1].stability_score", "missing"),
        (
            lambda r: r[0].update(segmentation=np.zeros((12, 10), bool)),
            "annotations[0].segmentation",
            "output_mode='coco_rle'",
        ),
        (
            lambda r: r[1]["segmentation"].update(size=[10, 12]),
            "annotations[1].segmentation.size",
            "differs from the image's",
        ),
        (lambda r: r[0].update(bbox=[1, 2, 3]), "annotations[0].bbox", "[x, y, w, h]"),
        (
            lambda r: r[0].update(predicted_iou=float("nan")),
            "annotations[0].predicted_iou",
            "a number",
        ),
        (lambda r: r[1].update(point_coords=[[1.0]]), "annotations[1].point_coords", "points"),
    ],
)
def test_writer_rejects_bad_records(change, field, message):
    records = generator_records(random_masks(2, 12, 10, seed=1))
    change(records)
    with pytest.raises(SA1BFormatError, match=message) as error:
        make_sa1b_document(records, 1, 10, 12, "x.png")
    assert (error.value.file, error.value.field) == ("records", field)


def test_image_and_annotation_ids():
    assert sa1b_image_id("sa_223750") == 223750
    for name in ("street", "sub/sa_5", "sa_1x", "IMG_0001"):
        image_id = sa1b_image_id(name)
        assert 2**46 <= image_id < 2**47 and image_id == sa1b_image_id(name)
    assert sa1b_image_id("street") == 2**46 + 0x1802309BD114  # stable across versions
    assert len({sa1b_image_id(f"img{i}") for i in range(1000)}) == 1000
    assert annotation_id(3, 5) == 3 * 65536 + 5
    assert annotation_id(2**47 - 1, 2**16 - 1) < 2**63
    with pytest.raises(ValueError, match="at most 65536 masks"):
        annotation_id(3, 2**16)


# ----------------------------------------------------------------------------- reader


def test_extracted_release(tmp_path, release):
    directory = extract(release, tmp_path / "sa1b")
    (directory / "_summary.json").write_text("{}")  # the data engine's, not an image
    (directory / ".sa_9.json.0123456789ab.tmp").write_text("{")
    (directory / ".hidden.json").write_text("{")
    check_samples(SA1BDataset(directory), release)


def test_tar_archives(tmp_path, release):
    archive = make_tar(release, tmp_path / "sa_000000.tar")
    check_samples(SA1BDataset(archive), release)
    check_samples(SA1BDataset(tmp_path), release)  # a directory of archives
    dataset = SA1BDataset([archive, make_tar(release, tmp_path / "copy.tar", prefix="")])
    assert len(dataset) == 6
    assert dataset.source(4) == f"{archive.with_name('copy.tar')}:sa_23.json"
    np.testing.assert_array_equal(dataset[4]["image"], decoded(release[23][0]))


def test_tar_members_in_subdirectories(tmp_path, release):
    archive = make_tar(release, tmp_path / "nested.tar", prefix="part/")
    dataset = SA1BDataset(archive)
    assert dataset.source(0) == f"{archive}:part/sa_1.json"
    check_samples(dataset, release)


def test_dataset_pickles_and_works_with_a_dataloader(tmp_path, release):
    dataset = SA1BDataset(make_tar(release, tmp_path / "a.tar"))
    copy = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copy[2]["image"], dataset[2]["image"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1)
    assert [s["image_info"]["image_id"] for s in loader] == [1, 23, 7]
    assert dataset[-1]["image_info"]["image_id"] == 7
    with pytest.raises(IndexError):
        dataset[3]


def test_reader_recursive(tmp_path, release):
    extract(release, tmp_path / "a" / "b")
    assert len(SA1BDataset(tmp_path)) == 0
    check_samples(SA1BDataset(tmp_path, recursive=True), release)


def test_tar_image_missing_or_misnamed(tmp_path, release):
    jpeg, masks, document = release[7]
    document = json.loads(json.dumps(document))
    document["image"]["file_name"] = "other.jpg"
    archive = make_tar({7: (jpeg, masks, document)}, tmp_path / "a.tar")
    with pytest.raises(FileNotFoundError, match=r"a\.tar:sa_7\.json: image\.file_name: 'other"):
        SA1BDataset(archive)[0]
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        info = tarfile.TarInfo("sa_7.json")
        data = json.dumps(release[7][2]).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    dataset = SA1BDataset(tmp_path / "b.tar")
    assert dataset.read_annotations(0) == release[7][2]  # annotations without the image
    with pytest.raises(FileNotFoundError, match="image.file_name: 'sa_7.jpg' is not in"):
        dataset[0]


def test_compressed_tar_is_refused(tmp_path, release):
    extract(release, tmp_path / "x")
    with tarfile.open(tmp_path / "x.tar", "w:gz") as tar:
        tar.add(tmp_path / "x" / "sa_1.json", "sa_1.json")
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        SA1BDataset(tmp_path / "x.tar")


def test_missing_roots_and_images(tmp_path, release):
    with pytest.raises(FileNotFoundError, match="SA-1B root not found"):
        SA1BDataset(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a directory, a .json file or a .tar"):
        SA1BDataset(tmp_path / "notes.txt")
    (tmp_path / "sa_1.json").write_text(json.dumps(release[1][2]))
    with pytest.raises(FileNotFoundError, match=r"sa_1\.json: image\.file_name: image .*sa_1"):
        SA1BDataset(tmp_path / "sa_1.json")[0]


def test_image_size_mismatch(tmp_path, release):
    directory = extract(release, tmp_path)
    (directory / "sa_7.jpg").write_bytes(release[1][0])  # 24 x 32, the JSON says 30 x 20
    with pytest.raises(SA1BFormatError, match=r"sa_7\.json: image\.height/width: \[30, 20\]"):
        SA1BDataset(directory)[2]


def test_unreadable_image(tmp_path, release):
    directory = extract(release, tmp_path)
    (directory / "sa_1.jpg").write_bytes(release[1][0][:200])  # truncated JPEG
    with pytest.raises(ValueError, match=r"cannot read image .*sa_1\.jpg"):
        SA1BDataset(directory)[0]


def _set(path: str, value):
    def change(document):
        keys = [int(key) if key.isdigit() else key for key in path.split(".")]
        node = document
        for key in keys[:-1]:
            node = node[key]
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda d: "[1, 2", "", "not valid JSON"),
        (lambda d: [], "", "expected a JSON object"),
        (_set("image", KeyError), "image", "missing"),
        (_set("image.width", "20"), "image.width", "an int >= 1"),
        (_set("image.image_id", 1.5), "image.image_id", "an int >= 0"),
        (_set("image.file_name", ""), "image.file_name", "a file name"),
        (_set("annotations", {}), "annotations", "expected a list"),
        (_set("annotations.1", 7), "annotations[1]", "expected an object"),
        (_set("annotations.1.segmentation", KeyError), "annotations[1].segmentation", "missing"),
        (
            _set("annotations.0.segmentation.counts", [1, 2]),
            "annotations[0].segmentation.counts",
            "compressed RLE string",
        ),
        (
            _set("annotations.0.segmentation.size", [20, 30]),
            "annotations[0].segmentation.size",
            r"\[20, 30\] differs from the image's \[height, width\] \[30, 20\]",
        ),
        (_set("annotations.2.bbox", [0, 0, "w", 1]), "annotations[2].bbox", r"\[x, y, w, h\]"),
        (_set("annotations.1.area", -1), "annotations[1].area", "a number >= 0"),
        (_set("annotations.1.id", 7000), "annotations[1].id", "repeats the id of annotations"),
        (_set("annotations.0.stability_score", None), "annotations[0].stability_score", "number"),
    ],
)
def test_malformed_json_names_file_and_field(tmp_path, release, change, field, message):
    document = json.loads(json.dumps(release[7][2]))
    result = change(document)
    document = document if result is None else result
    path = tmp_path / "sa_7.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    (tmp_path / "sa_7.jpg").write_bytes(release[7][0])
    with pytest.raises(SA1BFormatError, match=message) as error:
        SA1BDataset(tmp_path)[0]
    assert error.value.file == str(path) and error.value.field == field
    assert str(error.value).startswith(f"{path}: {field}" if field else f"{path}: ")


def test_optional_engine_fields(tmp_path, release):
    document = json.loads(json.dumps(release[7][2]))
    for annotation in document["annotations"]:
        for field in ("predicted_iou", "point_coords", "stability_score", "crop_box"):
            del annotation[field]
    (tmp_path / "sa_7.json").write_text(json.dumps(document))
    (tmp_path / "sa_7.jpg").write_bytes(release[7][0])
    assert SA1BDataset(tmp_path)[0]["annotations"] == document["annotations"]
    with pytest.raises(SA1BFormatError, match="annotations.0..predicted_iou: missing"):
        write_sa1b_json(tmp_path / "out.json", document)  # the writer wants every field
