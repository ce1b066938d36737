"""COCO RLE operators against pycocotools (the oracle), for both kernel backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backends import each_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco
from rle_masks import blobs, noise, to_fortran

from sam_lightning import ops

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on NumPy 2


def coco_encode(masks: np.ndarray) -> list[dict]:
    return coco.encode(to_fortran(masks.astype(np.uint8)))


def coco_rle(counts: list[int], h: int, w: int) -> dict:
    """pycocotools' compressed RLE of uncompressed counts."""
    return coco.frPyObjects({"size": [h, w], "counts": list(counts)}, h, w)


def coco_compress(counts: list[int], h: int, w: int) -> bytes:
    return coco_rle(counts, h, w)["counts"]


def edge_masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    one = np.zeros((1, 9, 7), np.uint8)
    one[0, 4, 3] = 1
    first, last = np.zeros((2, 1, 6, 5), np.uint8)
    first[0, 0, 0] = last[0, -1, -1] = 1
    return {
        "empty": np.zeros((2, 5, 7), np.uint8),
        "full": np.ones((2, 5, 7), np.uint8),
        "one_pixel": one,
        "first_pixel": first,
        "last_pixel": last,
        "row_1xN": noise(rng, 3, 1, 37),
        "column_Nx1": noise(rng, 3, 37, 1),
        "single_pixel_masks": np.array([[[0]], [[1]]], np.uint8),
        "odd_13x7": noise(rng, 4, 13, 7, 0.3),
        "blobs_64x48": blobs(rng, 4, 64, 48),
        "noise_31x17": noise(rng, 3, 31, 17),
        "long_runs_300x300": np.ones((1, 300, 300), np.uint8),
        "long_runs_hole": np.pad(
            np.zeros((1, 1, 1), np.uint8), ((0, 0), (150, 149), (99, 200)), constant_values=1
        ),
    }


EDGE = edge_masks()


@pytest.mark.parametrize("name", EDGE)
def test_encode_matches_pycocotools(backend, name):
    masks = EDGE[name]
    assert ops.rle_encode(masks) == coco_encode(masks)


@pytest.mark.parametrize("name", EDGE)
def test_decode_area_bbox_match_pycocotools(backend, name):
    masks = EDGE[name]
    reference = coco_encode(masks)
    decoded = ops.rle_decode(reference)
    assert decoded.dtype == torch.uint8 and decoded.is_contiguous()
    np.testing.assert_array_equal(decoded.numpy(), masks)
    area = ops.rle_area(reference)
    assert area.dtype == torch.int64
    np.testing.assert_array_equal(area.numpy(), coco.area(reference))
    boxes = ops.rle_to_bbox(reference)
    assert boxes.dtype == torch.float64 and boxes.shape == (len(masks), 4)
    np.testing.assert_array_equal(boxes.numpy(), coco.toBbox(reference))


def layouts(masks: np.ndarray) -> dict[str, object]:
    """The same N x H x W masks in several memory layouts and types."""
    tensor = torch.from_numpy(masks)
    padded = torch.from_numpy(np.pad(masks, ((0, 0), (2, 3), (1, 4))))
    strided = torch.from_numpy(np.repeat(np.repeat(masks, 2, axis=1), 3, axis=2))
    return {
        "uint8": tensor,
        "bool": tensor.bool(),
        "nonzero_255": tensor * 255,
        "numpy": masks,
        "numpy_fortran_view": to_fortran(masks).transpose(2, 0, 1),
        "fortran_view": torch.from_numpy(to_fortran(masks)).permute(2, 0, 1),
        "fortran_view_bool": torch.from_numpy(to_fortran(masks)).permute(2, 0, 1).bool(),
        "transposed_view": tensor.transpose(1, 2).contiguous().transpose(1, 2),
        "row_slice": padded[:, 2:-3, 1:-4],
        "column_slice": padded.permute(0, 2, 1).contiguous().permute(0, 2, 1)[:, 2:-3, 1:-4],
        "stepped_slice": strided[:, ::2, ::3],
        "batch_slice": torch.from_numpy(np.stack([masks, 1 - masks], axis=1))[:, 0],
        "expanded": tensor[:1].expand(len(masks), -1, -1),
    }


@pytest.mark.parametrize("layout", list(layouts(EDGE["odd_13x7"])))
@pytest.mark.parametrize("name", ["odd_13x7", "blobs_64x48", "row_1xN", "column_Nx1"])
def test_encode_any_layout(backend, name, layout):
    masks = EDGE[name]
    view = layouts(masks)[layout]
    expected = masks[:1].repeat(len(masks), 0) if layout == "expanded" else masks
    assert ops.rle_encode(view) == coco_encode(expected)


def test_encode_shapes(backend):
    mask = EDGE["odd_13x7"][0]
    assert ops.rle_encode(mask) == coco_encode(mask[None])
    assert ops.rle_encode(torch.zeros((0, 4, 5), dtype=torch.bool)) == []
    assert ops.rle_encode(mask[::-1]) == coco_encode(mask[None, ::-1])  # negative strides


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    p=st.sampled_from([0.02, 0.3, 0.5, 0.97]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_masks_match_pycocotools(n, h, w, p, seed):
    masks = noise(np.random.default_rng(seed), n, h, w, p)
    reference = coco_encode(masks)
    with each_backend() as backends:
        for _ in backends:
            assert ops.rle_encode(masks) == reference
            np.testing.assert_array_equal(ops.rle_decode(reference).numpy(), masks)
            np.testing.assert_array_equal(ops.rle_area(reference).numpy(), coco.area(reference))
            np.testing.assert_array_equal(
                ops.rle_to_bbox(reference).numpy(), coco.toBbox(reference)
            )


def test_decode_accepts_str_and_uncompressed_counts(backend):
    masks = EDGE["blobs_64x48"]
    reference = coco_encode(masks)
    as_str = [{"size": r["size"], "counts": r["counts"].decode()} for r in reference]
    raw = [
        {"size": r["size"], "counts": coco_counts}
        for r, coco_counts in zip(reference, (ops.rle_decompress(r["counts"]) for r in reference))
    ]
    for rles in (as_str, raw, tuple(raw)):
        np.testing.assert_array_equal(ops.rle_decode(rles).numpy(), masks)
    single = ops.rle_decode(reference[1])
    assert single.shape == (1, 64, 48)
    np.testing.assert_array_equal(single[0].numpy(), coco.decode(reference[1]))
    assert ops.rle_decode([]).shape == (0, 0, 0)


def test_decode_mixed_sizes_raises(backend):
    rles = coco_encode(EDGE["odd_13x7"]) + coco_encode(EDGE["blobs_64x48"])
    with pytest.raises(ValueError, match=r"RLE 4 has size \[64, 48\] but RLE 0 has size \[13, 7\]"):
        ops.rle_decode(rles)


def test_bbox_quirks_match_pycocotools(backend):
    wraps = np.zeros((1, 4, 5), np.uint8)
    wraps[0, 3, 0] = wraps[0, 0, 1] = 1  # a run crossing a column: full height
    rles = coco_encode(wraps)
    non_canonical = [  # zero-length runs skipped, all-empty wraps, trailing run ignored
        coco_rle(counts, 4, 5)
        for counts in ([0, 0, 20], [5, 0, 3, 2, 10], [20, 0], [0, 20], [3, 4, 13], [2, 3, 0, 4, 11])
    ]
    for case in (rles, non_canonical):
        np.testing.assert_array_equal(ops.rle_to_bbox(case).numpy(), coco.toBbox(case))
    np.testing.assert_array_equal(ops.rle_area(non_canonical).numpy(), coco.area(non_canonical))


@pytest.mark.parametrize("crowd", [False, True])
def test_iou_matches_pycocotools(backend, crowd):
    rng = np.random.default_rng(1)
    dt = coco_encode(np.concatenate([blobs(rng, 5, 40, 30), np.zeros((1, 40, 30), np.uint8)]))
    gt = coco_encode(np.concatenate([blobs(rng, 4, 40, 30), np.zeros((1, 40, 30), np.uint8)]))
    iscrowd = [crowd, False, crowd, True, crowd]
    iou = ops.rle_iou(dt, gt, iscrowd)
    assert iou.dtype == torch.float64 and iou.shape == (6, 5)
    np.testing.assert_array_equal(iou.numpy(), coco.iou(dt, gt, iscrowd))
    assert ops.rle_iou(dt, dt).diagonal()[:5].eq(1).all()  # the last dt is empty: IoU 0


def test_iou_disjoint_and_empty(backend):
    left, right = np.zeros((2, 1, 10, 10), np.uint8)
    left[0, :, :3] = right[0, :, 6:] = 1
    a, b = coco_encode(left), coco_encode(right)
    assert ops.rle_iou(a, b, [0]).item() == 0.0
    assert ops.rle_iou(a, b, [1]).item() == coco.iou(a, b, [1]).item() == 0.0
    assert ops.rle_iou([], b).shape == (0, 1)
    assert ops.rle_iou(a, []).shape == (1, 0)


def test_iou_size_mismatch_raises(backend):
    a = coco_encode(EDGE["odd_13x7"][:1])
    b = coco_encode(EDGE["blobs_64x48"][:1])
    with pytest.raises(
        ValueError, match=r"dt RLE 0 has size \[13, 7\] but gt RLE 0 has size \[64, 48\]"
    ):
        ops.rle_iou(a, b, [0])


@pytest.mark.parametrize("intersect", [False, True])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_merge_matches_pycocotools(backend, intersect, count):
    rng = np.random.default_rng(count)
    rles = coco_encode(blobs(rng, count, 33, 21))
    merged = ops.rle_merge(rles, intersect=intersect)
    assert merged == coco.merge(rles, intersect=intersect)
    combined = np.logical_and.reduce if intersect else np.logical_or.reduce
    expected = combined(ops.rle_decode(rles).numpy(), axis=0)
    np.testing.assert_array_equal(ops.rle_decode(merged)[0].numpy(), expected)


def canonical(rles: list[dict]) -> list[dict]:
    """The same masks re-encoded by pycocotools (no zero-length runs in the middle)."""
    return coco.encode(np.asfortranarray(coco.decode(rles)))


def random_counts(rng: np.random.Generator, pixels: int) -> list[int]:
    """Counts summing to `pixels`, often with zero-length runs (non-canonical)."""
    cuts = np.sort(rng.integers(0, pixels + 1, rng.integers(0, 8)))
    return np.diff(np.concatenate([[0], cuts, [pixels]])).tolist()


def test_non_canonical_counts(backend):
    """Area, bbox and decode follow pycocotools on counts with zero-length runs. Its iou and
    merge walks stop early on them (wrong results, heap corruption in merge), so ours
    canonicalise first: results equal pycocotools' on the re-encoded masks, with the bbox
    prefilter still computed from the counts as given."""
    rng = np.random.default_rng(5)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 6, 2))
        dt, gt = (
            [coco_rle(random_counts(rng, h * w), h, w) for _ in range(rng.integers(1, 4))]
            for _ in range(2)
        )
        crowd = rng.integers(0, 2, len(gt)).tolist()
        np.testing.assert_array_equal(ops.rle_area(dt).numpy(), coco.area(dt))
        np.testing.assert_array_equal(ops.rle_to_bbox(dt).numpy(), coco.toBbox(dt))
        np.testing.assert_array_equal(
            ops.rle_decode(dt).numpy(), coco.decode(dt).transpose(2, 0, 1)
        )
        prefilter = coco.iou(coco.toBbox(dt), coco.toBbox(gt), crowd) > 0
        expected = np.where(prefilter, coco.iou(canonical(dt), canonical(gt), crowd), 0)
        np.testing.assert_array_equal(ops.rle_iou(dt, gt, crowd).numpy(), expected)
        for intersect in (False, True):
            assert ops.rle_merge(dt, intersect) == coco.merge(canonical(dt), intersect)


def test_merge_errors(backend):
    with pytest.raises(ValueError, match="needs at least one RLE"):
        ops.rle_merge([])
    rles = coco_encode(EDGE["odd_13x7"][:2]) + coco_encode(EDGE["noise_31x17"][:1])
    with pytest.raises(ValueError, match=r"RLE 2 has size \[31, 17\] but RLE 0 has size \[13, 7\]"):
        ops.rle_merge(rles)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=40).filter(lambda c: sum(c) > 0))
def test_compress_matches_pycocotools(counts):
    expected = coco_compress(counts, 1, sum(counts))
    with each_backend() as backends:
        for _ in backends:
            assert ops.rle_compress(counts) == expected
            assert ops.rle_decompress(expected) == counts
            assert ops.rle_decompress(expected.decode()) == counts


def test_compress_extremes(backend):
    counts = [2**32 - 3, 2]  # 65535 x 65537 = 2**32 - 1 pixels
    expected = coco_compress(counts, 65535, 65537)
    assert ops.rle_compress(np.array(counts)) == expected
    assert ops.rle_compress(torch.tensor(counts)) == expected
    assert ops.rle_decompress(expected) == counts
    assert ops.rle_compress([]) == b"" and ops.rle_decompress(b"") == []
    big = ops.rle_encode(np.ones((300, 300), np.uint8))[0]
    assert ops.rle_decompress(big["counts"]) == [0, 90000]
