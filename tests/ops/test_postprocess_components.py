"""connected_components against OpenCV and remove_small_regions against the official
helper (which uses OpenCV), for both kernel backends."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from backends import BACKENDS, each_backend, kernels_of
from hypothesis import given, settings
from hypothesis import strategies as st
from postprocess_inputs import MASK_KINDS, random_masks

from sam_lightning import ops
from sam_lightning.ops import postprocess
from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Runs a test once per kernel backend of :mod:`sam_lightning.ops.postprocess`."""
    if request.param == "compiled" and not HAS_EXTENSION:
        pytest.skip(f"compiled extension not loaded: {LOAD_ERROR}")
    monkeypatch.setattr(postprocess, "_KERNELS", kernels_of(request.param, postprocess))
    return request.param


def cv2_labels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    results = [cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8) for m in masks]
    labels = np.stack([r[1] for r in results]) if len(results) else np.zeros(masks.shape, np.int32)
    return labels, np.array([r[0] for r in results], dtype=np.int64)


def official_remove(official, masks: np.ndarray, area_thresh: float, mode: str):
    results = [official.utils.amg.remove_small_regions(m, area_thresh, mode) for m in masks]
    out = np.stack([np.asarray(r[0], dtype=bool) for r in results]) if results else masks
    return out, np.array([r[1] for r in results], dtype=bool)


def edge_masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    checker = (np.indices((9, 12)).sum(0) % 2).astype(bool)[None]  # one 8-connected blob
    stripes = np.zeros((1, 10, 10), bool)
    stripes[0, ::2] = True  # separate rows
    spiral = np.zeros((1, 15, 15), bool)
    spiral[0, 1:-1:2, 1:-1] = True
    spiral[0, 1:-1, 1:-1:4] = True
    order = np.zeros((1, 4, 8), bool)
    order[0, 1, 0] = order[0, 0, 3] = order[0, 3, 1] = True  # block order != raster order
    diagonal = np.eye(7, dtype=bool)[None]  # 8-connected only
    return {
        "empty": np.zeros((2, 5, 7), bool),
        "full": np.ones((2, 5, 7), bool),
        "single_pixel_masks": np.array([[[False]], [[True]]]),
        "row_1xN": rng.random((3, 1, 41)) < 0.5,
        "column_Nx1": rng.random((3, 41, 1)) < 0.5,
        "checkerboard": checker,
        "stripes": stripes,
        "spiral": spiral,
        "block_order": order,
        "diagonal": diagonal,
        "odd_13x7": rng.random((4, 13, 7)) < 0.4,
        "blobs_64x48": random_masks(rng, 4, 64, 48, "blobs"),
        "long_rows_3x300": rng.random((2, 3, 300)) < 0.97,
    }


EDGE = edge_masks()


@pytest.mark.parametrize("name", EDGE)
def test_connected_components_match_cv2(backend, name):
    masks = EDGE[name]
    expected_labels, expected_counts = cv2_labels(masks)
    labels, counts = ops.connected_components(masks)
    assert labels.dtype == torch.int32 and counts.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    np.testing.assert_array_equal(counts.numpy(), expected_counts)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    kind=st.sampled_from(MASK_KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_connected_components_match_cv2(n, h, w, kind, seed):
    masks = random_masks(np.random.default_rng(seed), n, h, w, kind)
    expected_labels, expected_counts = cv2_labels(masks)
    with each_backend(postprocess) as backends:
        for _ in backends:
            labels, counts = ops.connected_components(masks)
            np.testing.assert_array_equal(labels.numpy(), expected_labels)
            np.testing.assert_array_equal(counts.numpy(), expected_counts)


def test_connected_components_layouts_and_shapes(backend):
    masks = torch.from_numpy(EDGE["odd_13x7"])
    expected, counts = cv2_labels(masks.numpy())
    labels, num = ops.connected_components(masks[1])  # one H x W mask: 0-d count
    assert labels.shape == (13, 7) and num.shape == () and num.item() == counts[1]
    np.testing.assert_array_equal(labels.numpy(), expected[1])
    column_major = masks.transpose(1, 2).contiguous().transpose(1, 2)
    for view in (column_major, masks.to(torch.uint8) * 9, masks.numpy()[:, :, :]):
        np.testing.assert_array_equal(ops.connected_components(view)[0].numpy(), expected)
    sliced = masks[::2, 1::2]
    np.testing.assert_array_equal(
        ops.connected_components(sliced)[0].numpy(), cv2_labels(sliced.numpy())[0]
    )
    flipped = masks.numpy()[:, ::-1]  # negative strides
    np.testing.assert_array_equal(
        ops.connected_components(flipped)[0].numpy(), cv2_labels(flipped)[0]
    )
    labels, num = ops.connected_components(torch.zeros(0, 4, 4, dtype=torch.bool))
    assert labels.shape == (0, 4, 4) and num.shape == (0,)


def test_connected_components_large_parallel_batch(backend):
    # Enough pixels for the parallel path; noise has many components (and labels).
    rng = np.random.default_rng(1)
    masks = np.concatenate(
        [random_masks(rng, 3, 300, 410, "blobs"), random_masks(rng, 3, 300, 410, "noise")]
    )
    expected_labels, expected_counts = cv2_labels(masks)
    labels, counts = ops.connected_components(masks)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    np.testing.assert_array_equal(counts.numpy(), expected_counts)


# ---- remove_small_regions -------------------------------------------------------------------

AREAS = [0.0, 1.0, 2.5, 4.0, 10.0, 37.0, 1e9, float("nan"), float("inf"), -1.0]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    kind=st.sampled_from(MASK_KINDS),
    area=st.sampled_from(AREAS),
    seed=st.integers(0, 2**32 - 1),
)
def test_remove_small_regions_matches_official(official, n, h, w, kind, area, seed):
    masks = random_masks(np.random.default_rng(seed), n, h, w, kind)
    expected = {mode: official_remove(official, masks, area, mode) for mode in ("holes", "islands")}
    with each_backend(postprocess) as backends:
        for _ in backends:
            for mode, (expected_masks, expected_changed) in expected.items():
                out, changed = ops.remove_small_regions(masks, area, mode)
                assert out.dtype == changed.dtype == torch.bool
                np.testing.assert_array_equal(out.numpy(), expected_masks)
                np.testing.assert_array_equal(changed.numpy(), expected_changed)


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("name", EDGE)
def test_remove_small_regions_edge_masks(backend, official, name, mode):
    masks = EDGE[name]
    for area in (1.0, 3.0, 30.0):
        expected_masks, expected_changed = official_remove(official, masks, area, mode)
        out, changed = ops.remove_small_regions(masks, area, mode)
        np.testing.assert_array_equal(out.numpy(), expected_masks)
        np.testing.assert_array_equal(changed.numpy(), expected_changed)


def test_islands_all_small_keeps_largest_lowest_label(backend, official):
    mask = EDGE["block_order"][0]  # three single pixels; OpenCV's label 1 is (1, 0)
    out, changed = ops.remove_small_regions(mask, 5, "islands")
    expected, expected_changed = official.utils.amg.remove_small_regions(mask, 5, "islands")
    assert changed.item() is True and expected_changed is True
    np.testing.assert_array_equal(out.numpy(), expected)
    assert out.numpy().nonzero() == (np.array([1]), np.array([0]))  # not raster-first (0, 3)


def test_changed_even_when_mask_is_unchanged(backend, official):
    # One small island that is also the largest: kept, but the official says changed.
    mask = np.zeros((6, 6), bool)
    mask[2:4, 2:4] = True
    out, changed = ops.remove_small_regions(mask, 10, "islands")
    assert (
        changed.item() is True and official.utils.amg.remove_small_regions(mask, 10, "islands")[1]
    )
    np.testing.assert_array_equal(out.numpy(), mask)
    # Holes: the background touching the border counts; an all-false mask becomes all-true.
    out, changed = ops.remove_small_regions(np.zeros((3, 3), bool), 10, "holes")
    assert changed.item() is True and out.all()
    out, changed = ops.remove_small_regions(np.ones((3, 3), bool), 10, "holes")
    assert changed.item() is False and out.all()


def test_remove_small_regions_layouts_and_values(backend, official):
    masks = EDGE["blobs_64x48"]
    expected = official_remove(official, masks, 40, "holes")
    tensor = torch.from_numpy(masks)
    column_major = tensor.transpose(1, 2).contiguous().transpose(1, 2)
    for view in (column_major, tensor.to(torch.uint8) * 3):
        out, changed = ops.remove_small_regions(view, 40, "holes")
        np.testing.assert_array_equal(out.numpy(), expected[0])
        np.testing.assert_array_equal(changed.numpy(), expected[1])
    sliced = masks[:, ::-1, 1::2]
    out, changed = ops.remove_small_regions(sliced, 40, "islands")
    np.testing.assert_array_equal(out.numpy(), official_remove(official, sliced, 40, "islands")[0])
    out, changed = ops.remove_small_regions(np.zeros((0, 3, 3), bool), 4, "holes")
    assert out.shape == (0, 3, 3) and changed.shape == (0,)


def test_remove_small_regions_large_parallel_batch(backend, official):
    rng = np.random.default_rng(2)
    masks = random_masks(rng, 6, 300, 410, "blobs") ^ (rng.random((6, 300, 410)) < 0.002)
    for mode in ("holes", "islands"):
        expected_masks, expected_changed = official_remove(official, masks, 50, mode)
        out, changed = ops.remove_small_regions(masks, 50, mode)
        np.testing.assert_array_equal(out.numpy(), expected_masks)
        np.testing.assert_array_equal(changed.numpy(), expected_changed)


def test_reference_chunks_give_the_same_result(monkeypatch):
    from sam_lightning.ops import _postprocess_reference as reference

    masks = torch.from_numpy(EDGE["blobs_64x48"] ^ EDGE["odd_13x7"][:1, :1, :1])
    whole = [reference.connected_components(masks)] + [
        reference.remove_small_regions(masks, 30, mode) for mode in ("holes", "islands")
    ]
    monkeypatch.setattr(reference, "_CHUNK_PIXELS", 64 * 48 * 2)  # 2 masks per chunk
    chunked = [reference.connected_components(masks)] + [
        reference.remove_small_regions(masks, 30, mode) for mode in ("holes", "islands")
    ]
    for (a, b), (c, d) in zip(whole, chunked):
        assert torch.equal(a, c) and torch.equal(b, d)
    expected_labels, _ = cv2_labels(masks.numpy())
    np.testing.assert_array_equal(chunked[0][0].numpy(), expected_labels)
