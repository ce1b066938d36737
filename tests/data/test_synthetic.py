"""SyntheticShapes: determinism, exact disjoint masks, SA-1B item structure and round trip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sam_lightning.data.sa1b_dataset import SA1BDataset, decode_masks
from sam_lightning.data.synthetic import SyntheticShapes, write_sa1b


def test_same_seed_gives_identical_items() -> None:
    first, second = SyntheticShapes(4, seed=3), SyntheticShapes(4, seed=3)
    for index in range(4):
        a, b = first[index], second[index]
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["annotations"] == b["annotations"]
        assert a["image_info"] == b["image_info"]


def test_different_seeds_and_indices_differ() -> None:
    a, b = SyntheticShapes(2, seed=0), SyntheticShapes(2, seed=1)
    assert not np.array_equal(a[0]["image"], b[0]["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    counts = [ann["segmentation"]["counts"] for ann in a[0]["annotations"]]
    assert counts != [ann["segmentation"]["counts"] for ann in b[0]["annotations"]]


def test_items_ignore_global_random_state_and_access_order() -> None:
    dataset = SyntheticShapes(6, seed=5)
    np.random.seed(0)
    first = dataset[4]
    np.random.seed(1)
    _ = dataset[2], dataset[3]
    second = dataset[4]
    np.testing.assert_array_equal(first["image"], second["image"])
    assert first["annotations"] == second["annotations"]


def test_items_are_the_same_in_another_process() -> None:
    code = (
        "from sam_lightning.data.synthetic import SyntheticShapes;"
        "import hashlib;"
        "item = SyntheticShapes(3, (40, 56), seed=9)[2];"
        "print(hashlib.sha256(item['image'].tobytes()).hexdigest(),"
        " [a['segmentation']['counts'] for a in item['annotations']])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    import hashlib

    item = SyntheticShapes(3, (40, 56), seed=9)[2]
    expected = (
        f"{hashlib.sha256(item['image'].tobytes()).hexdigest()} "
        f"{[a['segmentation']['counts'] for a in item['annotations']]}"
    )
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (90, 40)])
def test_masks_are_exact_disjoint_and_match_annotations(size: tuple[int, int]) -> None:
    dataset = SyntheticShapes(5, size, min_shapes=2, max_shapes=6, seed=11, min_area=10)
    height, width = size
    for index in range(len(dataset)):
        image, masks = dataset.render(index)
        item = dataset[index]
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert item["image_info"] == {
            "image_id": index,
            "width": width,
            "height": height,
            "file_name": f"synthetic_11_{index:07d}.png",
        }
        assert 1 <= len(masks) <= 6
        assert masks.sum(axis=0).max() <= 1  # disjoint
        decoded = decode_masks(item["annotations"], size=size).numpy()
        np.testing.assert_array_equal(decoded, masks)
        ids = [ann["id"] for ann in item["annotations"]]
        assert len(set(ids)) == len(ids)
        for ann, mask in zip(item["annotations"], masks):
            assert ann["segmentation"]["size"] == [height, width]
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["area"] == mask.sum() >= 10
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            x, y = ann["point_coords"][0]
            assert mask[int(y), int(x)]
            assert ann["crop_box"] == [0, 0, width, height]


def test_occluded_shapes_lose_the_covered_pixels() -> None:
    # With many shapes in a small image, occlusion must happen, and masks stay disjoint.
    dataset = SyntheticShapes(10, 48, min_shapes=8, max_shapes=8, seed=2, min_area=1)
    fragments = 0
    for index in range(len(dataset)):
        _, masks = dataset.render(index)
        assert masks.sum(axis=0).max() <= 1
        fragments += len(masks) < 8
    assert fragments > 0  # some shapes were hidden entirely (or drawn off the image)


def test_shapes_are_textured() -> None:
    image, masks = SyntheticShapes(1, 128, min_shapes=3, max_shapes=3, seed=4).render(0)
    for mask in masks:
        if mask.sum() > 50:
            assert image[mask].std(axis=0).max() > 2  # not a flat colour
    background = ~masks.any(axis=0)
    assert image[background].std(axis=0).max() > 2


def voronoi_labels(sites: np.ndarray, height: int, width: int) -> np.ndarray:
    """Brute force: the index of the nearest site (row, column) to each pixel centre."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    distances = [(ys - sy) ** 2 + (xs - sx) ** 2 for sy, sx in sites]
    return np.argmin(np.stack(distances), axis=0)


@pytest.mark.parametrize("size", [(64, 64), (40, 72)])
def test_cell_mosaics_annotate_every_pixel_as_its_voronoi_cell(size: tuple[int, int]) -> None:
    height, width = size
    dataset = SyntheticShapes(
        6, size, min_shapes=0, max_shapes=0, seed=3, background="cells", min_cells=2,
        max_cells=5, min_area=1,
    )  # fmt: skip
    counts = set()
    for index in range(len(dataset)):
        _, masks = dataset.render(index)
        assert (masks.sum(axis=0) == 1).all()  # a partition: every pixel in exactly one mask
        # The sites are the generator's first draws after the cell count.
        rng = np.random.default_rng([3, index])
        count = int(rng.integers(2, 6))
        sites = rng.uniform(0, 1, (count, 2)) * (height, width)
        expected = voronoi_labels(sites, height, width)
        expected_masks = [expected == cell for cell in range(count) if (expected == cell).any()]
        np.testing.assert_array_equal(masks, np.stack(expected_masks))
        counts.add(count)
    assert len(counts) > 1  # the count varies within the range


def test_shapes_occlude_the_cells_and_are_masks_too() -> None:
    dataset = SyntheticShapes(
        4, 64, min_shapes=2, max_shapes=2, seed=1, background="cells", min_cells=3,
        max_cells=3, min_area=1,
    )  # fmt: skip
    for index in range(len(dataset)):
        _, masks = dataset.render(index)
        assert (masks.sum(axis=0) == 1).all()
        assert len(masks) >= 4  # 3 cells (some may be hidden) + 2 shapes drawn over them


def test_textures_can_be_restricted() -> None:
    flat = SyntheticShapes(
        3, 64, min_shapes=1, max_shapes=2, seed=0, background="cells", textures=["noise"]
    )
    default = SyntheticShapes(3, 64, min_shapes=1, max_shapes=2, seed=0, background="cells")

    def spreads(dataset: SyntheticShapes) -> list[float]:
        """Mean absolute deviation from the median colour of each mask of > 50 pixels."""
        values = []
        for index in range(len(dataset)):
            image, masks = dataset.render(index)
            for mask in masks[masks.sum(axis=(1, 2)) > 50]:
                pixels = image[mask].astype(float)
                values.append(np.abs(pixels - np.median(pixels, axis=0)).mean())
        return values

    assert max(spreads(flat)) < 40  # one colour plus noise: no stripes, gradients, checkers
    assert max(spreads(default)) > 40


def test_sa1b_round_trip(tmp_path) -> None:
    dataset = SyntheticShapes(3, (40, 72), seed=7)
    paths = write_sa1b(dataset, tmp_path)
    assert [p.name for p in paths] == [f"synthetic_7_{i:07d}.json" for i in range(3)]
    read = SA1BDataset(tmp_path)
    assert len(read) == 3
    for index in range(3):
        original, loaded = dataset[index], read[index]
        np.testing.assert_array_equal(original["image"], loaded["image"])
        assert original["annotations"] == loaded["annotations"]
        assert original["image_info"] == loaded["image_info"]
        assert loaded["source"] == str(paths[index])


def test_bad_arguments_and_indices() -> None:
    with pytest.raises(ValueError, match="min_shapes"):
        SyntheticShapes(1, min_shapes=4, max_shapes=3)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(1, image_size=(8, 64))
    with pytest.raises(ValueError, match="min_shapes"):
        SyntheticShapes(1, min_shapes=0, max_shapes=2)  # no shapes needs a cell background
    assert len(SyntheticShapes(1, min_shapes=0, max_shapes=0, background="cells")[0]["annotations"])
    with pytest.raises(ValueError, match="background"):
        SyntheticShapes(1, background="sky")
    with pytest.raises(ValueError, match="min_cells"):
        SyntheticShapes(1, background="cells", min_cells=0)
    with pytest.raises(ValueError, match="textures"):
        SyntheticShapes(1, textures=["plaid"])
    dataset = SyntheticShapes(2)
    with pytest.raises(IndexError):
        dataset[2]
    np.testing.assert_array_equal(dataset[-1]["image"], dataset[1]["image"])
