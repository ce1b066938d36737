"""stability_score, masks_to_boxes and NMS against the official helpers and torchvision's
NMS semantics, for both kernel backends; errors, opcheck and the Python API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backends import BACKENDS, each_backend, kernels_of
from hypothesis import given, settings
from hypothesis import strategies as st
from postprocess_inputs import (
    MASK_KINDS,
    per_category_nms,
    random_masks,
    smooth_logits,
    torchvision_nms,
    torchvision_shim,
)

from sam_lightning import ops
from sam_lightning.ops import postprocess
from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR

needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason=f"no extension: {LOAD_ERROR}")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Runs a test once per kernel backend of :mod:`sam_lightning.ops.postprocess`."""
    if request.param == "compiled" and not HAS_EXTENSION:
        pytest.skip(f"compiled extension not loaded: {LOAD_ERROR}")
    monkeypatch.setattr(postprocess, "_KERNELS", kernels_of(request.param, postprocess))
    return request.param


def test_backend_switch_reaches_the_kernels(backend):
    expected = torch.ops.sam_lightning if backend == "compiled" else ops._postprocess_reference
    assert postprocess._KERNELS is expected


# ---- stability score ----------------------------------------------------------------------


def assert_same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32)), (ours, theirs)


LOGIT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def tricky_logits(rng, shape, dtype, thresholds) -> torch.Tensor:
    """Values around the thresholds (exactly at them, one step either side, in ``dtype``)
    mixed with normal noise, signed zeros, infinities and NaN."""
    t = torch.tensor(thresholds, dtype=torch.float64).to(dtype)
    up = torch.nextafter(t, torch.full_like(t, float("inf")))
    down = torch.nextafter(t, torch.full_like(t, -float("inf")))
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")], dtype=dtype)
    pool = torch.cat([t, up, down, special, torch.randn(16, dtype=torch.float64).to(dtype)])
    return pool[torch.from_numpy(rng.integers(0, len(pool), shape))]


@settings(max_examples=100, deadline=None)
@given(
    batch=st.lists(st.integers(0, 3), max_size=2),
    h=st.integers(0, 9),
    w=st.integers(0, 9),
    dtype=st.sampled_from(LOGIT_DTYPES),
    mask_threshold=st.sampled_from([0.0, 0.5, -1.25, 1e-3]),
    offset=st.sampled_from([1.0, 0.7, 0.3, 0.05, 0.0, -0.5, 1e-9]),
    seed=st.integers(0, 2**32 - 1),
)
def test_stability_score_is_bitwise_official(
    official, batch, h, w, dtype, mask_threshold, offset, seed
):
    rng = np.random.default_rng(seed)
    thresholds = [mask_threshold + offset, mask_threshold - offset]
    logits = tricky_logits(rng, (*batch, h, w), dtype, thresholds)
    expected = official.utils.amg.calculate_stability_score(logits, mask_threshold, offset)
    with each_backend(postprocess) as backends:
        for _ in backends:
            assert_same_bits(ops.stability_score(logits, mask_threshold, offset), expected)


@pytest.mark.parametrize("dtype", LOGIT_DTYPES)
def test_stability_score_blobs_and_layouts(backend, official, dtype):
    logits = smooth_logits(np.random.default_rng(1), 4, 37, 53).to(dtype)
    score = official.utils.amg.calculate_stability_score
    for view in (logits, logits.transpose(1, 2), logits[:, 3:30:2, ::3], logits[::2], logits[0]):
        assert_same_bits(ops.stability_score(view, 0.0, 1.0), score(view, 0.0, 1.0))
    if dtype == torch.float32:  # NumPy input, any layout
        fortran = np.asfortranarray(logits.numpy())
        assert_same_bits(ops.stability_score(fortran, 0.0, 1.0), score(logits, 0.0, 1.0))


def test_stability_score_rounds_threshold_in_logit_dtype(backend):
    # 1 + 2**-10 > 1 + 2**-11 + 2**-40 is true in float16 only because torch rounds the
    # threshold to float32 first and then to float16 (ties to even: 1.0).
    logits = torch.tensor([[[1 + 2**-10]]], dtype=torch.float16)
    assert ops.stability_score(logits, 1 + 2**-11 + 2**-40, 0.0).item() == 1.0
    # 1.0 > 1 - 2**-30 is false in every float dtype but float64.
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert torch.isnan(ops.stability_score(torch.ones(1, 1, dtype=dtype), 1 - 2**-30, 0.0))
    assert ops.stability_score(torch.ones(1, 1, dtype=torch.float64), 1 - 2**-30, 0.0) == 1.0


def test_stability_score_wraps_rows_at_int16_like_official(backend, official):
    # Rows of 40000 pixels: 20000 above 0.5 and 40000 above -0.5; the official's int16 row
    # sums wrap 40000 to -25536.
    logits = torch.tensor([1.0, 0.0]).repeat(2, 20000)
    expected = official.utils.amg.calculate_stability_score(logits, 0.0, 0.5)
    assert expected.item() == pytest.approx(40000 / -51072)
    assert_same_bits(ops.stability_score(logits, 0.0, 0.5), expected)


def test_stability_score_empty_and_nan(backend):
    assert ops.stability_score(torch.zeros(0, 5, 5), 0.0, 1.0).shape == (0,)
    assert torch.isnan(ops.stability_score(torch.zeros(3, 0, 5), 0.0, 1.0)).all()
    assert torch.isnan(ops.stability_score(torch.full((2, 2), -5.0), 0.0, 1.0))
    assert ops.stability_score(torch.full((2, 2), float("nan")), 0.0, 1.0).isnan()
    # Negative offset: more pixels above the high threshold than above the low one.
    assert ops.stability_score(torch.tensor([[0.0, 2.0, 3.0]]), 1.0, -1.5).item() == 3.0
    assert ops.stability_score(torch.tensor([[0.0, 2.0]]), 1.0, -1.5).item() == float("inf")


# ---- masks to boxes ----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    kind=st.sampled_from(MASK_KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_masks_to_boxes_matches_official(official, batch, h, w, kind, seed):
    rng = np.random.default_rng(seed)
    count = int(np.prod(batch))
    masks = random_masks(rng, count, h, w, kind).reshape(*batch, h, w)
    if kind == "sparse" and masks.size:  # single pixels too
        masks.reshape(-1, h, w)[0] = False
        masks.reshape(-1, h, w)[0, rng.integers(h), rng.integers(w)] = True
    tensor = torch.from_numpy(masks)
    expected = official.utils.amg.batched_mask_to_box(tensor)
    with each_backend(postprocess) as backends:
        for _ in backends:
            column_major = tensor.transpose(-1, -2).contiguous().transpose(-1, -2)
            for view in (tensor, tensor.to(torch.uint8), column_major):
                boxes = ops.masks_to_boxes(view)
                assert boxes.dtype == torch.int64 and torch.equal(boxes, expected)


def test_masks_to_boxes_layouts_and_values(backend, official):
    masks = torch.from_numpy(random_masks(np.random.default_rng(2), 5, 33, 47, "blobs"))
    reference = official.utils.amg.batched_mask_to_box
    for view in (masks.transpose(1, 2), masks[:, 5:30:3, ::2], masks[::2], masks[1]):
        assert torch.equal(ops.masks_to_boxes(view), reference(view))
    assert torch.equal(ops.masks_to_boxes(masks.numpy()[:, ::-1]), reference(masks.flip(1)))
    valued = masks.to(torch.uint8) * 7  # any nonzero value is foreground
    assert torch.equal(ops.masks_to_boxes(valued), reference(masks))
    one = torch.zeros(1, 6, 9, dtype=torch.bool)
    one[0, 4, 2] = True
    assert ops.masks_to_boxes(one).tolist() == [[2, 4, 2, 4]]
    assert ops.masks_to_boxes(torch.ones(1, 1, dtype=torch.bool)).tolist() == [0, 0, 0, 0]
    assert ops.masks_to_boxes(torch.ones(1, 300, dtype=torch.bool)).tolist() == [0, 0, 299, 0]


def test_masks_to_boxes_empty_shapes(backend):
    for shape in [(0, 5, 5), (3, 0, 5), (3, 5, 0), (2, 0, 4, 4), (0, 0)]:
        boxes = ops.masks_to_boxes(torch.zeros(shape, dtype=torch.bool))
        assert boxes.dtype == torch.int64 and boxes.shape == (*shape[:-2], 4)
        assert not boxes.any()


# ---- NMS ------------------------------------------------------------------------------------


def random_boxes(rng, n: int, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """XYXY boxes: small integer grids (duplicates, ties, zero areas) or random floats."""
    if kind == "grid":
        xy = rng.integers(0, 12, (n, 2))
        wh = rng.integers(0, 8, (n, 2))  # zero widths and heights too
    else:
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(0, 40, (n, 2)) * (rng.random((n, 1)) < 0.95)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if kind == "grid" and n > 2:
        boxes[rng.integers(0, n, n // 3)] = boxes[0]  # exact duplicates
    return torch.from_numpy(boxes).to(dtype)


def random_scores(rng, n: int, kind: str) -> torch.Tensor:
    if kind == "equal":
        return torch.full((n,), 0.5)
    if kind == "ties":
        return torch.from_numpy(rng.integers(0, 4, n) / 4).float()
    return torch.from_numpy(rng.random(n)).float()


THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 0.95, 1.0, 0.1 + 0.2, -0.5, float("nan")]


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 40),
    box_kind=st.sampled_from(["grid", "float"]),
    score_kind=st.sampled_from(["random", "ties", "equal"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threshold=st.sampled_from(THRESHOLDS),
    categories=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_nms_matches_torchvision(n, box_kind, score_kind, dtype, threshold, categories, seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, box_kind, dtype)
    scores = random_scores(rng, n, score_kind).to(dtype)
    idxs = torch.from_numpy(rng.integers(0, categories, n))
    expected = torchvision_nms(boxes, scores, threshold)
    expected_batched = per_category_nms(boxes, scores, idxs, threshold)
    with each_backend(postprocess) as backends:
        for _ in backends:
            keep = ops.nms(boxes, scores, threshold)
            assert keep.dtype == torch.int64 and keep.tolist() == expected
            assert ops.batched_nms(boxes, scores, idxs, threshold).tolist() == expected_batched
            zeros = torch.zeros(n, dtype=torch.int64)  # one category: plain NMS
            assert ops.batched_nms(boxes, scores, zeros, threshold).tolist() == expected


def test_nms_compares_float_iou_in_double(backend):
    # IoU 3 / 10 is float32(0.3) = 0.30000001192...; torchvision's kernel compares it in
    # double, where it is greater than 0.3, and suppresses (the shim does not).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert ops.nms(boxes, scores, 0.3).tolist() == [0] == torchvision_nms(boxes, scores, 0.3)
    assert ops.nms(boxes.double(), scores, 0.3).tolist() == [0, 1]  # 0.3 in double: equal
    assert ops.nms(boxes, scores, 0.30000002).tolist() == [0, 1]


def test_nms_matches_shim_where_it_agrees_with_torchvision(backend):
    shim = torchvision_shim()
    rng = np.random.default_rng(3)
    for n in (0, 1, 17, 300):
        boxes = random_boxes(rng, n, "float", torch.float32)
        scores = random_scores(rng, n, "ties")
        for threshold in (0.5, 0.7):  # float32(t) <= t: the shim's float compare agrees
            assert torch.equal(
                ops.nms(boxes, scores, threshold), shim.nms(boxes, scores, threshold)
            )
            zeros = torch.zeros(n, dtype=torch.int64)
            expected = shim.batched_nms(boxes, scores, zeros, threshold)
            assert torch.equal(ops.batched_nms(boxes, scores, zeros, threshold), expected)


def test_batched_nms_categories(backend):
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9])
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 3]
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1]), 0.5).tolist() == [1, 3, 2]
    # idxs of any integer dtype, negative ids, and floats that hold integers
    for idxs in (torch.tensor([5, 5, -2, -2], dtype=torch.int8), torch.tensor([5.0, 5, -2, -2])):
        assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match="idxs must hold integers"):
        ops.batched_nms(boxes, scores, torch.tensor([0.5, 0, 1, 1]), 0.5)
    # non-contiguous boxes and scores; NumPy inputs
    wide = torch.zeros(4, 8)
    wide[:, ::2] = boxes
    strided = torch.zeros(8)
    strided[::2] = scores
    assert ops.nms(wide[:, ::2], strided[::2], 0.5).tolist() == [1, 3]
    assert ops.nms(boxes.numpy(), scores.numpy(), 0.5).tolist() == [1, 3]


def test_nms_many_boxes(backend):
    rng = np.random.default_rng(4)
    n = 3000
    boxes = random_boxes(rng, n, "float", torch.float32)
    scores = random_scores(rng, n, "ties")
    idxs = torch.from_numpy(rng.integers(0, 4, n))
    shim = torchvision_shim()
    keep = ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, shim.nms(boxes, scores, 0.5))
    batched = ops.batched_nms(boxes, scores, idxs, 0.5)
    expected = torch.zeros(n, dtype=torch.bool)
    for category in range(4):
        members = torch.where(idxs == category)[0]
        expected[members[shim.nms(boxes[members], scores[members], 0.5)]] = True
    assert sorted(batched.tolist()) == torch.where(expected)[0].tolist()
    assert (scores[batched].diff() <= 0).all()


# ---- errors ----------------------------------------------------------------------------------

BOXES = torch.zeros(3, 4)
SCORES = torch.zeros(3)
MASKS = torch.zeros(2, 4, 4, dtype=torch.bool)

BAD_INPUTS = {
    "logits_dtype": (
        lambda: ops.stability_score(torch.zeros(2, 2, dtype=torch.int64), 0.0, 1.0),
        r"stability_score: logits must be a float32, float64, float16 or bfloat16 tensor, "
        r"got int64",
    ),
    "logits_dim": (
        lambda: ops.stability_score(torch.zeros(5), 0.0, 1.0),
        r"stability_score: logits must have at least 2 dimensions \(\.\.\., H, W\), got 1-D",
    ),
    "boxes_masks_dtype": (
        lambda: ops.masks_to_boxes(torch.zeros(2, 2)),
        r"masks_to_boxes: masks must be a bool or uint8 tensor, got float32",
    ),
    "boxes_masks_dim": (
        lambda: ops.masks_to_boxes(torch.zeros(2, dtype=torch.bool)),
        r"masks_to_boxes: masks must have at least 2 dimensions",
    ),
    "nms_boxes_dtype": (
        lambda: ops.nms(BOXES.long(), SCORES, 0.5),
        r"nms: boxes must be float32 or float64, got int64",
    ),
    "nms_boxes_shape": (
        lambda: ops.nms(torch.zeros(3, 5), SCORES, 0.5),
        r"nms: boxes must have shape \(N, 4\), got \[3, 5\]",
    ),
    "nms_scores_dtype": (
        lambda: ops.nms(BOXES, SCORES.long(), 0.5),
        r"nms: scores must be a floating-point tensor, got int64",
    ),
    "nms_scores_shape": (
        lambda: ops.nms(BOXES, torch.zeros(4), 0.5),
        r"nms: scores must have shape \(3,\), got \[4\]",
    ),
    "batched_scores_shape": (
        lambda: ops.batched_nms(BOXES, torch.zeros(3, 1), torch.zeros(3), 0.5),
        r"batched_nms: scores must have shape \(3,\), got \[3, 1\]",
    ),
    "batched_idxs_shape": (
        lambda: ops.batched_nms(BOXES, SCORES, torch.zeros(2, dtype=torch.int64), 0.5),
        r"batched_nms: idxs must have shape \(3,\), got \[2\]",
    ),
    "cc_dtype": (
        lambda: ops.connected_components(torch.zeros(2, 2, dtype=torch.int32)),
        r"connected_components: masks must be a bool or uint8 tensor, got int32",
    ),
    "cc_dim": (
        lambda: ops.connected_components(torch.zeros(1, 2, 2, 2, dtype=torch.bool)),
        r"connected_components: masks must be H x W or N x H x W, got 4-D",
    ),
    "rsr_mode": (
        lambda: ops.remove_small_regions(MASKS, 10, "both"),
        r"remove_small_regions: mode must be 'holes' or 'islands', got 'both'",
    ),
    "rsr_dtype": (
        lambda: ops.remove_small_regions(MASKS.float(), 10, "holes"),
        r"remove_small_regions: masks must be a bool or uint8 tensor, got float32",
    ),
    "rsr_dim": (
        lambda: ops.remove_small_regions(MASKS[0, 0], 10, "islands"),
        r"remove_small_regions: masks must be H x W or N x H x W, got 1-D",
    ),
    "not_a_tensor": (
        lambda: ops.masks_to_boxes([[True]]),
        r"masks must be a torch.Tensor or numpy.ndarray",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_value_error(backend, case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


@needs_extension
def test_kernels_check_arguments_directly():
    kernels = torch.ops.sam_lightning
    with pytest.raises(ValueError, match=r"batched_nms: idxs must be int64, got int32"):
        kernels.batched_nms(BOXES, SCORES, torch.zeros(3, dtype=torch.int32), 0.5)
    with pytest.raises(ValueError, match=r"remove_small_regions: mode must be"):
        kernels.remove_small_regions(MASKS, 1.0, "island")
    with pytest.raises(ValueError, match=r"remove_small_regions: mode must be"):
        ops._postprocess_reference.remove_small_regions(MASKS, 1.0, "island")
    with pytest.raises(ValueError, match=r"batched_nms: idxs must be int64, got int32"):
        ops._postprocess_reference.batched_nms(
            BOXES, SCORES, torch.zeros(3, dtype=torch.int32), 0.5
        )


# ---- opcheck ---------------------------------------------------------------------------------


def opcheck_cases() -> list[tuple[str, tuple]]:
    rng = np.random.default_rng(5)
    logits = smooth_logits(rng, 3, 9, 11)
    masks = torch.from_numpy(random_masks(rng, 3, 9, 11, "noise"))
    boxes = random_boxes(rng, 12, "grid", torch.float32)
    scores = random_scores(rng, 12, "ties")
    idxs = torch.from_numpy(rng.integers(0, 3, 12))
    return [
        ("stability_score", (logits, 0.0, 1.0)),
        ("stability_score", (logits.half().transpose(1, 2), 0.5, 0.25)),
        ("masks_to_boxes", (masks,)),
        ("masks_to_boxes", (masks.to(torch.uint8).transpose(1, 2),)),
        ("nms", (boxes, scores, 0.5)),
        ("batched_nms", (boxes.double(), scores, idxs, 0.3)),
        ("connected_components", (masks,)),
        ("connected_components", (masks[0].to(torch.uint8),)),
        ("remove_small_regions", (masks, 3.0, "holes")),
        ("remove_small_regions", (masks[1], 3.0, "islands")),
    ]


@needs_extension
@pytest.mark.parametrize("index", range(10))
def test_opcheck(index):
    name, args = opcheck_cases()[index]
    torch.library.opcheck(getattr(torch.ops.sam_lightning, name).default, args)


def test_results_stay_on_cpu_for_cpu_inputs(backend):
    labels, count = ops.connected_components(MASKS.numpy())
    assert labels.device.type == count.device.type == "cpu" and count.shape == (2,)
    out, changed = ops.remove_small_regions(MASKS[0], 100.0, "holes")
    assert out.shape == (4, 4) and out.all() and changed.shape == () and changed.item() is True
