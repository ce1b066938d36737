"""Training transforms: resize/pad geometry, large-scale jitter, mask selection, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam_lightning.data import samples as samples_module
from sam_lightning.data.samples import (
    SampleTransform,
    SkipBadSamples,
    TransformedDataset,
    collate,
    sample_rng,
)
from sam_lightning.data.synthetic import SyntheticShapes
from sam_lightning.ops import rle_encode
from sam_lightning.transforms import ResizeLongestSide


def make_item(image: np.ndarray, masks: np.ndarray, source: str = "test") -> dict:
    """An SA-1B-style item of ``image`` (H x W x 3) with ``masks`` (N x H x W bool)."""
    annotations = []
    for i, (rle, mask) in enumerate(zip(rle_encode(masks), masks)):
        annotations.append(
            {
                "id": 100 + i,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": int(mask.sum()),
                "bbox": [0, 0, 1, 1],
            }
        )
    return {"image": image, "annotations": annotations, "image_info": {}, "source": source}


def rectangle_item(height: int, width: int, box: tuple[int, int, int, int]) -> dict:
    """A black image with a white rectangle ``box`` = (y0, y1, x0, x1) and its mask."""
    y0, y1, x0, x1 = box
    mask = np.zeros((1, height, width), dtype=bool)
    mask[0, y0:y1, x0:x1] = True
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[mask[0]] = 255
    return make_item(image, mask)


def rows_cols(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


@pytest.mark.parametrize(
    ("shape", "box", "size", "expected_input", "expected_box"),
    [
        # 300 x 450 -> 100 x 150 (scale 1/3): rows 30:90 -> 10:30, cols 60:150 -> 20:50.
        ((300, 450), (30, 90, 60, 150), 150, (100, 150), (10, 30, 20, 50)),
        # Edges between samples: row i reads floor(3 i + 1.5), so rows 31:89 -> 10:30.
        ((300, 450), (31, 89, 61, 149), 150, (100, 150), (10, 30, 20, 50)),
        # Portrait 400 x 200 -> 100 x 50 (scale 1/4): rows 40:120 -> 10:30, cols 8:40 -> 2:10.
        ((400, 200), (40, 120, 8, 40), 100, (100, 50), (10, 30, 2, 10)),
        # Upscaling 50 x 80 -> 100 x 160 (scale 2): rows 10:20 -> 20:40, cols 5:30 -> 10:60.
        ((50, 80), (10, 20, 5, 30), 160, (100, 160), (20, 40, 10, 60)),
    ],
)
def test_resize_and_pad_put_image_and_mask_where_computed(
    shape, box, size, expected_input, expected_box
) -> None:
    item = rectangle_item(*shape, box)
    sample = SampleTransform(image_size=size)(item, sample_rng(0, 0, 0))
    image, masks = sample["image"], sample["masks"]
    assert image.shape == (3, size, size) and image.dtype == torch.uint8
    assert masks.shape == (1, size, size) and masks.dtype == torch.bool
    assert sample["input_size"] == expected_input
    assert sample["original_size"] == shape
    assert sample["annotation_ids"].tolist() == [100]
    h, w = expected_input
    # The image region is exactly the predictor's resize; the padding is zero.
    resized = ResizeLongestSide(size).apply_image(item["image"])
    np.testing.assert_array_equal(image[:, :h, :w].permute(1, 2, 0).numpy(), resized)
    assert not image[:, h:].any() and not image[:, :, w:].any()
    # The mask lands where computed, and the bright pixels of the image with it.
    assert rows_cols(masks[0]) == expected_box
    assert int(masks[0].sum()) == (expected_box[1] - expected_box[0]) * (
        expected_box[3] - expected_box[2]
    )
    y0, y1, x0, x1 = expected_box
    assert (image[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] > 200).all()
    outside = torch.ones(size, size, dtype=torch.bool)
    outside[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
    assert (image[:, outside] < 60).all()


def test_fixed_lsj_scale_lands_where_computed() -> None:
    # scale 0.5: 300 x 450 -> 50 x 75 (scale 1/6); rows 30:90 -> 5:15, cols 60:150 -> 10:25.
    item = rectangle_item(300, 450, (30, 90, 60, 150))
    transform = SampleTransform(image_size=150, lsj=True, scale_range=(0.5, 0.5))
    sample = transform(item, sample_rng(0, 0, 0))
    assert sample["input_size"] == (50, 75)
    assert rows_cols(sample["masks"][0]) == (5, 15, 10, 25)
    assert not sample["image"][:, 50:].any() and not sample["image"][:, :, 75:].any()


def test_cropped_window_equals_resize_then_crop() -> None:
    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    full = np.array(Image.fromarray(image).resize((260, 180), Image.BILINEAR)).astype(int)
    window = (37, 101, 64, 80)
    part = samples_module._resize_crop_image(image, (180, 260), window).astype(int)
    assert part.shape == (64, 80, 3)
    assert np.abs(full[37:101, 101:181] - part).max() <= 1


def quadrant_item(height: int, width: int) -> dict:
    """Four quadrant masks, each painted in its own colour."""
    masks = np.zeros((4, height, width), dtype=bool)
    masks[0, : height // 2, : width // 2] = True
    masks[1, : height // 2, width // 2 :] = True
    masks[2, height // 2 :, : width // 2] = True
    masks[3, height // 2 :, width // 2 :] = True
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    image = colours[np.argmax(masks, axis=0)]
    return make_item(image, masks)


def test_lsj_keeps_image_and_masks_aligned_and_in_bounds() -> None:
    item = quadrant_item(120, 200)
    colours = {100: (255, 0, 0), 101: (0, 255, 0), 102: (0, 0, 255), 103: (255, 255, 0)}
    transform = SampleTransform(image_size=96, lsj=True)
    cropped = padded = 0
    for index in range(30):
        sample = transform(item, sample_rng(1, 0, index))
        image, masks = sample["image"], sample["masks"]
        assert image.shape == (3, 96, 96) and masks.shape[1:] == (96, 96)
        h, w = sample["input_size"]
        assert 1 <= h <= 96 and 1 <= w <= 96
        assert not image[:, h:].any() and not image[:, :, w:].any()
        assert not masks[:, h:].any() and not masks[:, :, w:].any()
        assert masks.flatten(1).any(1).all()  # no empty masks
        assert masks.sum(0).max() <= 1
        for mask, ann_id in zip(masks, sample["annotation_ids"].tolist()):
            colour = torch.tensor(colours[ann_id]).view(3, 1)
            pixels = image[:, mask].int()
            close = ((pixels - colour).abs().max(0).values < 40).float().mean()
            assert close > 0.75, (index, ann_id, float(close))
        cropped += w == 96 and h == 96
        padded += w < 96
    assert cropped and padded  # both regimes were exercised


def grid_item(count: int = 20) -> dict:
    masks = np.zeros((count, 40, 200), dtype=bool)
    for i in range(count):
        masks[i, 10:30, i * 10 : i * 10 + 8] = True
    return make_item(np.zeros((40, 200, 3), dtype=np.uint8), masks)


def test_lsj_drops_masks_outside_the_crop() -> None:
    # 20 bars at x = 10 i .. 10 i + 7 of a 40 x 200 image; scale 2 at image_size 100 resizes
    # to 40 x 200 and crops 100 columns: 9 to 10 bars are seen, the others dropped.
    item = grid_item()
    transform = SampleTransform(image_size=100, lsj=True, scale_range=(2.0, 2.0))
    for index in range(10):
        sample = transform(item, sample_rng(0, 0, index))
        assert sample["input_size"] == (40, 100)
        assert 9 <= len(sample["masks"]) <= 11
        assert sample["masks"].flatten(1).any(1).all()
        ids = sorted(sample["annotation_ids"].tolist())
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # neighbouring bars


def test_large_empty_and_vanishing_masks_are_dropped() -> None:
    height, width = 80, 80
    masks = np.zeros((5, height, width), dtype=bool)
    masks[0, :76, :] = True  # 95% of the image
    masks[1, :40, :] = True  # 50%
    masks[3, 1, 1] = True  # 1 pixel, lost when downscaling by 4 (samples rows 2, 6, ...)
    masks[4, 60:70, 60:70] = True  # masks[2] stays empty
    item = make_item(np.zeros((height, width, 3), dtype=np.uint8), masks)
    sample = SampleTransform(image_size=20)(item, sample_rng(0, 0, 0))
    assert sorted(sample["annotation_ids"].tolist()) == [101, 104]
    sample = SampleTransform(image_size=20, max_mask_fraction=1.0)(item, sample_rng(0, 0, 0))
    assert sorted(sample["annotation_ids"].tolist()) == [100, 101, 104]


def test_at_most_max_masks_are_kept_as_a_random_subset() -> None:
    item = grid_item()
    transform = SampleTransform(image_size=200, max_masks=5, chunk=3)
    subsets = set()
    for index in range(6):
        sample = transform(item, sample_rng(0, 0, index))
        ids = sample["annotation_ids"].tolist()
        assert len(ids) == len(set(ids)) == 5 == len(sample["masks"])
        for mask, ann_id in zip(sample["masks"], ids):
            assert rows_cols(mask) == (10, 30, (ann_id - 100) * 10, (ann_id - 100) * 10 + 8)
        subsets.add(tuple(ids))
    assert len(subsets) > 1
    again = transform(item, sample_rng(0, 0, 0))["annotation_ids"].tolist()
    assert again == transform(item, sample_rng(0, 0, 0))["annotation_ids"].tolist()
    assert len(SampleTransform(image_size=200, max_masks=64)(item, sample_rng(0, 0, 0))["masks"])
    assert (
        len(SampleTransform(image_size=200, max_masks=0)(item, sample_rng(0, 0, 0))["masks"]) == 0
    )


def test_item_without_annotations() -> None:
    item = make_item(np.zeros((30, 50, 3), dtype=np.uint8), np.zeros((0, 30, 50), dtype=bool))
    sample = SampleTransform(image_size=64, lsj=True)(item, sample_rng(0, 0, 0))
    assert sample["masks"].shape == (0, 64, 64)
    assert sample["annotation_ids"].shape == (0,)


def test_collate_shapes_and_image_index() -> None:
    item = grid_item()
    samples = [
        SampleTransform(image_size=64, max_masks=k)(item, sample_rng(0, 0, i))
        for i, k in enumerate([2, 0, 3])
    ]
    batch = collate(samples)
    assert batch["images"].shape == (3, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["masks"].shape == (5, 64, 64) and batch["masks"].dtype == torch.bool
    assert batch["image_index"].tolist() == [0, 0, 2, 2, 2]
    assert batch["image_index"].dtype == torch.int64
    assert batch["annotation_ids"].tolist() == [
        i for s in samples for i in s["annotation_ids"].tolist()
    ]
    assert torch.equal(batch["masks"][2:], samples[2]["masks"])
    assert batch["input_size"].tolist() == [[13, 64]] * 3
    assert batch["original_size"].tolist() == [[40, 200]] * 3
    assert batch["sources"] == ["test"] * 3


def test_train_samples_depend_on_seed_epoch_and_index_only() -> None:
    dataset = SyntheticShapes(4, (60, 90), seed=0)
    transform = SampleTransform(image_size=64, lsj=True, max_masks=3)
    samples = TransformedDataset(dataset, transform, seed=3)
    first = samples[2]
    _ = samples[0]
    assert torch.equal(samples[2]["image"], first["image"])
    assert torch.equal(samples[2]["masks"], first["masks"])
    assert torch.equal(samples[(2, 0)]["image"], first["image"])
    assert not torch.equal(samples[(2, 1)]["image"], first["image"])
    assert torch.equal(
        TransformedDataset(dataset, transform, seed=3, epoch=1)[2]["image"],
        samples[(2, 1)]["image"],
    )
    assert samples.source(2) == "item 2"


def test_dataloader_workers_give_the_same_batches() -> None:
    dataset = TransformedDataset(
        SyntheticShapes(6, (48, 64), seed=1), SampleTransform(64, lsj=True)
    )
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=3, num_workers=workers, collate_fn=collate
        )
        batches.append(list(loader))
    for a, b in zip(*batches):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["masks"], b["masks"])
        assert torch.equal(a["image_index"], b["image_index"])


class Flaky:
    def __init__(self, bad: set[int], length: int = 5) -> None:
        self.bad, self.length = bad, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        if index in self.bad:
            raise ValueError(f"corrupt item {index}")
        return index

    def source(self, index: int) -> str:
        return f"file{index}.json"


def test_skip_bad_samples_logs_counts_and_moves_on(caplog) -> None:
    dataset = SkipBadSamples(Flaky({1, 2, 4}))
    with caplog.at_level("WARNING"):
        assert dataset[1] == 3
        assert dataset[4] == 0  # wraps around
    assert dataset.skipped == 3
    assert "file1.json" in caplog.text and "corrupt item 2" in caplog.text
    with pytest.raises(RuntimeError, match="consecutive"):
        SkipBadSamples(Flaky({0, 1, 2}), max_consecutive=3)[0]
    with pytest.raises(ValueError, match="corrupt item 0"):  # errors not listed propagate
        SkipBadSamples(Flaky({0}), errors=(KeyError,))[0]


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        SampleTransform(scale_range=(0.0, 1.0))
    with pytest.raises(ValueError):
        SampleTransform(image_size=0)


def test_mask_resize_is_torch_nearest_exact() -> None:
    masks = np.random.default_rng(0).random((3, 70, 45)) < 0.5
    item = make_item(np.zeros((70, 45, 3), dtype=np.uint8), masks)
    sample = SampleTransform(image_size=128, max_mask_fraction=1.0)(item, sample_rng(0, 0, 0))
    h, w = sample["input_size"]
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(masks)[None].float(), (h, w), mode="nearest-exact"
    )[0].bool()
    order = (sample["annotation_ids"] - 100).tolist()
    assert torch.equal(sample["masks"][:, :h, :w], expected[order])
