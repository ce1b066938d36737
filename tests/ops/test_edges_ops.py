"""Edge operators against their references, for both kernel backends: thinning against
scikit-image's ``thin``, edge NMS against pyEdgeEval's copy of the edges toolbox's
``edgesNmsMex``, boundary matching against its definition (maximum, one-to-one, within the
radius; scipy's maximum bipartite matching for the cardinality), and the compiled kernels
against the NumPy references; errors and opcheck."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from skimage.morphology import thin as skimage_thin

from sam_lightning import ops
from sam_lightning.ops import _edges_reference, edges
from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
from bsds_fixtures import annotator_boundaries, annotator_segmentations, detector_edges  # noqa: E402

BACKENDS = ["compiled", "reference"]
needs_extension = pytest.mark.skipif(
    not (HAS_EXTENSION and edges._compiled_kernels_loaded()), reason=f"no extension: {LOAD_ERROR}"
)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Runs a test once per kernel backend of :mod:`sam_lightning.ops.edges`."""
    if request.param == "compiled" and not edges._compiled_kernels_loaded():
        pytest.skip(f"compiled edge kernels not loaded: {LOAD_ERROR}")
    kernels = torch.ops.sam_lightning if request.param == "compiled" else _edges_reference
    monkeypatch.setattr(edges, "_KERNELS", kernels)
    return request.param


def random_binary(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """Noise of a random density, thick blobs (many thinning iterations) or thin curves."""
    if kind == "noise":
        return rng.random((h, w)) < rng.uniform(0.05, 0.9)
    if kind == "blobs":
        return ndimage.gaussian_filter(rng.random((h, w)), 2.0) > 0.5
    return annotator_boundaries(annotator_segmentations(rng, h, w, 1, regions=6))[0]


@pytest.fixture(scope="module")
def scene():
    """A 161 x 241 scene: 5 annotators' boundaries and a detector's edge map."""
    rng = np.random.default_rng(11)
    boundaries = annotator_boundaries(annotator_segmentations(rng, 161, 241, 5, regions=10))
    return boundaries, detector_edges(rng, boundaries)


# ---- thinning ----------------------------------------------------------------------------


def test_deletion_tables_are_scikit_images():
    from skimage.morphology._skeletonize import G123_LUT, G123P_LUT

    assert np.array_equal(_edges_reference._TABLES[0], G123_LUT)
    assert np.array_equal(_edges_reference._TABLES[1], G123P_LUT)


@pytest.mark.parametrize("kind", ["noise", "blobs", "curves"])
def test_thin_equals_scikit_image(backend, kind):
    rng = np.random.default_rng(1)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(8, 48, 2))
        mask = random_binary(rng, h, w, kind)
        ours = ops.thin(mask)
        assert ours.dtype == torch.bool and ours.shape == (h, w)
        assert np.array_equal(ours.numpy(), skimage_thin(mask))


def test_thin_batches_uint8_and_strides(backend):
    rng = np.random.default_rng(2)
    masks = np.stack([random_binary(rng, 30, 20, k) for k in ("noise", "blobs", "curves")])
    values = (masks * rng.integers(1, 256, masks.shape)).astype(np.uint8)  # nonzero = on
    transposed = torch.from_numpy(values).transpose(1, 2)
    ours = ops.thin(transposed)
    expected = np.stack([skimage_thin(m.T) for m in masks])
    assert np.array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (1, 1), (1, 7), (6, 1), (2, 2), (0, 4, 4)])
def test_thin_degenerate_shapes(backend, shape):
    mask = np.ones(shape, dtype=bool)
    ours = ops.thin(mask)
    assert ours.shape == shape and ours.dtype == torch.bool
    if len(shape) == 2 and mask.size:  # scikit-image refuses empty images
        assert np.array_equal(ours.numpy(), skimage_thin(mask))


@needs_extension
def test_thin_of_thresholded_edge_maps_equals_scikit_image(scene):
    _, e = scene
    for threshold in (0.02, 0.1, 0.3, 0.6):
        assert np.array_equal(ops.thin(e >= threshold).numpy(), skimage_thin(e >= threshold))


# ---- edge orientation and NMS ------------------------------------------------------------


def test_conv_tri_equals_the_toolbox_port():
    from pyEdgeEval.preprocess.nms.toolbox import conv_tri

    rng = np.random.default_rng(3)
    image = rng.random((23, 31))
    for radius in (1, 2, 4):
        np.testing.assert_allclose(
            edges._conv_tri(image, radius), conv_tri(image, radius), 0, 1e-12
        )


def test_orientation_is_across_straight_edges():
    ys, xs = np.mgrid[:40, :40].astype(np.float64)
    steep = np.exp(-((xs - 20 - 0.05 * ys) ** 2) / 4)  # nearly vertical: normal along x
    flat = np.exp(-((ys - 20 - 0.05 * xs) ** 2) / 4)  # nearly horizontal: normal along y
    o_steep = ops.edge_orientation(steep).numpy()[12:28, 12:28]
    o_flat = ops.edge_orientation(flat).numpy()[12:28, 12:28]
    on_steep, on_flat = steep[12:28, 12:28] > 0.5, flat[12:28, 12:28] > 0.5
    assert np.abs(np.cos(o_steep[on_steep])).min() > 0.99
    assert np.abs(np.sin(o_flat[on_flat])).min() > 0.99
    assert ((o_steep >= 0) & (o_steep < np.pi)).all()
    assert ops.edge_orientation(steep.astype(np.float32)).dtype == torch.float32


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_edge_nms_backends_agree(dtype, scene):
    if not edges._compiled_kernels_loaded():
        pytest.skip("compiled edge kernels not loaded")
    _, e = scene
    e = e.astype(dtype)
    orientation = ops.edge_orientation(e)
    for radius, border, multiplier in ((1, 5, 1.01), (2, 0, 1.0), (3, 200, 0.9)):
        args = (torch.from_numpy(e), orientation, radius, border, multiplier)
        compiled = torch.ops.sam_lightning.edge_nms(*args)
        assert compiled.dtype == torch.from_numpy(e).dtype
        assert torch.equal(compiled, _edges_reference.edge_nms(*args))


def test_edge_nms_equals_pyedgeeval_edgesnmsmex(backend, scene):
    from pyEdgeEval._lib import nms as pyedgeeval_nms

    _, e = scene
    orientation = ops.edge_orientation(e).numpy()
    ours = ops.edge_nms(e, orientation, 1, 5, float(np.float32(1.01)))  # it passes m as a C float
    assert np.array_equal(ours.numpy(), pyedgeeval_nms(e, orientation, r=1, s=5, m=1.01))


def test_edge_nms_thins_a_blurred_line_and_fades_the_border(backend):
    ys, xs = np.mgrid[:30, :40]
    ridge = np.exp(-((xs - 17.3) ** 2) / 6.0)  # a vertical ridge 5-6 pixels wide
    out = ops.edge_nms(ridge).numpy()
    rows = out[8:22]
    assert ((rows > 0.5).sum(1) == 1).all() and (rows.argmax(1) == 17).all()
    flat = np.full((30, 40), 0.5)
    faded = ops.edge_nms(flat, np.zeros_like(flat), border=5, multiplier=1.0).numpy()
    assert faded[15, 20] == 0.5 and faded[15, 0] == 0 and faded[15, 2] == pytest.approx(0.2)
    assert faded[0, 20] == 0 and faded[29, 20] == 0


# ---- boundary correspondence -------------------------------------------------------------


def check_matching(pred: np.ndarray, gt: np.ndarray, max_dist: float, result) -> int:
    """Asserts that ``result`` is a one-to-one matching of boundary pixels within the radius
    and returns its size."""
    match_pred, match_gt = (m.numpy().ravel() for m in result)
    h, w = pred.shape
    matched = np.flatnonzero(match_pred >= 0)
    partners = match_pred[matched]
    assert pred.ravel()[matched].all() and gt.ravel()[partners].all()
    assert np.array_equal(match_gt[partners], matched)
    assert (match_gt >= 0).sum() == len(matched)
    dy, dx = matched // w - partners // w, matched % w - partners % w
    assert (dy * dy + dx * dx <= (max_dist * np.hypot(h, w)) ** 2).all()
    return len(matched)


def maximum_matching_size(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> int:
    py, px = np.nonzero(pred)
    gy, gx = np.nonzero(gt)
    d2 = (py[:, None] - gy[None]) ** 2 + (px[:, None] - gx[None]) ** 2
    graph = csr_matrix(d2 <= (max_dist * np.hypot(*pred.shape)) ** 2)
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


@pytest.mark.parametrize("max_dist", [0.0, 0.02, 0.0075, 0.1])
def test_matching_is_a_maximum_matching(backend, max_dist):
    rng = np.random.default_rng(4)
    for _ in range(15):
        h, w = (int(v) for v in rng.integers(10, 50, 2))
        pred = random_binary(rng, h, w, str(rng.choice(["noise", "curves"])))
        gt = random_binary(rng, h, w, "curves")
        size = check_matching(pred, gt, max_dist, ops.correspond_pixels(pred, gt, max_dist))
        assert size == maximum_matching_size(pred, gt, max_dist)


def test_matching_known_answers(backend):
    rng = np.random.default_rng(5)
    gt = annotator_boundaries(annotator_segmentations(rng, 160, 240, 1, regions=8))[0]
    radius = 0.0075 * np.hypot(160, 240)  # 2.2 pixels
    own = np.flatnonzero(gt.ravel())
    same_pred, same_gt = ops.correspond_pixels(gt, gt)  # the ground truth as prediction
    assert np.array_equal(same_pred.numpy().ravel()[own], own)  # each pixel with itself
    assert np.array_equal(same_gt.numpy().ravel()[own], own)
    shifted = np.zeros_like(gt)
    shifted[:, 1:] = gt[:, :-1]  # one pixel to the right: within the tolerance
    assert radius > 1 and check_matching(
        shifted, gt, 0.0075, ops.correspond_pixels(shifted, gt)
    ) == int(shifted.sum())
    exact = ops.correspond_pixels(shifted, gt, 0.0)  # radius 0: only the same pixel
    assert check_matching(shifted, gt, 0.0, exact) == int((shifted & gt).sum())
    empty = np.zeros_like(gt)
    match_pred, match_gt = ops.correspond_pixels(empty, gt)
    assert (match_pred < 0).all() and (match_gt < 0).all()


def test_matching_prefers_short_pairs_when_it_costs_none(backend):
    # Pixels 0 and 2 of a row against pixels 1 and 3: greedy nearest-first gives the two
    # pairs at distance 1 (0-1, 2-3), not 2-1 and an unmatched 0.
    pred = np.zeros((1, 8), dtype=bool)
    gt = np.zeros((1, 8), dtype=bool)
    pred[0, [0, 2]] = True
    gt[0, [1, 3]] = True
    match_pred, _ = ops.correspond_pixels(pred, gt, 2.5 / np.hypot(1, 8))
    assert match_pred[0, 0] == 1 and match_pred[0, 2] == 3


def test_compiled_matching_equals_the_reference():
    if not edges._compiled_kernels_loaded():
        pytest.skip("compiled edge kernels not loaded")
    rng = np.random.default_rng(6)
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        pred = torch.from_numpy(random_binary(rng, max(h, 1), max(w, 1), "noise"))
        gt = torch.from_numpy(rng.random((h, w)) < rng.uniform(0.02, 0.5))
        max_dist = float(rng.choice([0.0, 0.01, 0.05, 0.2, 1.0]))
        ours = torch.ops.sam_lightning.correspond_pixels(pred, gt, max_dist)
        reference = _edges_reference.correspond_pixels(pred, gt, max_dist)
        assert all(torch.equal(a, b) for a, b in zip(ours, reference)), trial


# ---- one image of the benchmark ----------------------------------------------------------


def test_compiled_counts_equal_the_reference(scene):
    if not edges._compiled_kernels_loaded():
        pytest.skip("compiled edge kernels not loaded")
    boundaries, e = scene
    e, b = torch.from_numpy(e[:80, :100]), torch.from_numpy(boundaries[:, :80, :100])
    thresholds = ops.bsds_thresholds(9)
    for thin in (True, False):
        compiled = torch.ops.sam_lightning.boundary_pr_counts(e, b, thresholds, 0.0075, thin)
        reference = _edges_reference.boundary_pr_counts(e, b, thresholds, 0.0075, thin)
        assert torch.equal(compiled, reference)


def test_counts_are_threshold_thin_and_match_per_annotator(backend, scene):
    boundaries, e = scene
    e, boundaries = e[:60, :90], boundaries[:, :60, :90]
    thresholds = [0.0, 0.1, 0.5, float(e.max()), 1.0]
    counts = ops.boundary_pr_counts(e, boundaries, thresholds).numpy()
    for k, t in enumerate(thresholds):
        pred = skimage_thin(e >= max(t, np.finfo(float).eps))  # zero edges are never boundary
        results = [ops.correspond_pixels(pred, g) for g in boundaries]
        hits = np.zeros(pred.shape, bool)
        for match_pred, _ in results:
            hits |= match_pred.numpy() >= 0
        matched = sum(int((match_gt >= 0).sum()) for _, match_gt in results)
        assert counts[k].tolist() == [
            matched,
            int(boundaries.sum()),
            int(hits.sum()),
            int(pred.sum()),
        ]
    assert counts[-1, 2:].tolist() == [0, 0] and counts[-2, 3] >= 1  # at the maximum: >= keeps it


def test_thresholds_are_matlabs_linspace():
    values = ops.bsds_thresholds(99).numpy()
    assert values[0] == 0.01 and values[-1] == 0.99 and len(values) == 99
    np.testing.assert_allclose(values, np.arange(1, 100) / 100, rtol=0, atol=1e-15)
    assert ops.bsds_thresholds(1).tolist() == [0.5]


# ---- errors and opcheck ------------------------------------------------------------------

BAD_INPUTS = [
    (
        "thin",
        (torch.zeros(3, dtype=torch.bool),),
        r"thin: masks must be H x W or N x H x W, got 1-D",
    ),
    ("thin", (torch.zeros(3, 3),), r"thin: masks must be a bool or uint8 tensor, got float32"),
    (
        "edge_nms",
        (torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.float64), 1, 5, 1.0),
        r"edge_nms: orientation must have the dtype of edges \(float32\), got float64",
    ),
    ("edge_nms", (torch.zeros(1, 4), torch.zeros(1, 4), 1, 5, 1.0), r"edge_nms: edges must be at"),
    ("edge_nms", (torch.zeros(4, 4), torch.zeros(4, 4), -1, 5, 1.0), r"edge_nms: radius must be"),
    (
        "edge_nms",
        (torch.full((4, 4), float("nan")), torch.zeros(4, 4), 1, 5, 1.0),
        r"edge_nms: edges must hold finite values",
    ),
    (
        "correspond_pixels",
        (torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 5, dtype=torch.bool), 0.1),
        r"correspond_pixels: gt must have the shape of pred \[4, 4\], got \[4, 5\]",
    ),
    (
        "correspond_pixels",
        (torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool), 1.5),
        r"correspond_pixels: max_dist \(a fraction of the image diagonal\) must be in \[0, 1\]",
    ),
    (
        "correspond_pixels",
        (torch.zeros(4, 4, dtype=torch.int32), torch.zeros(4, 4, dtype=torch.bool), 0.1),
        r"correspond_pixels: pred must be a bool or uint8 tensor, got int32",
    ),
    (
        "boundary_pr_counts",
        (
            torch.zeros(4, 4),
            torch.zeros(2, 4, 3, dtype=torch.bool),
            torch.zeros(3, dtype=torch.float64),
            0.0075,
            True,
        ),
        r"boundary_pr_counts: ground_truth must be A x 4 x 4 \(annotators x the shape of edges\)",
    ),
    (
        "boundary_pr_counts",
        (torch.zeros(4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(3), 0.0075, True),
        r"boundary_pr_counts: thresholds must be a float64 tensor, got float32",
    ),
    (
        "boundary_pr_counts",
        (
            torch.zeros(4, 4, dtype=torch.uint8),
            torch.zeros(2, 4, 4, dtype=torch.bool),
            torch.zeros(3, dtype=torch.float64),
            0.0075,
            True,
        ),
        r"boundary_pr_counts: edges must be a float32 or float64 tensor, got uint8",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c if isinstance(c, str) else None)
def test_bad_inputs_raise_value_error_in_both_backends(case):
    name, args, message = case
    kernels = [_edges_reference] + (
        [torch.ops.sam_lightning] if edges._compiled_kernels_loaded() else []
    )
    for kernel in kernels:
        with pytest.raises(ValueError, match=message):
            getattr(kernel, name)(*args)


def test_python_api_validates_thresholds_and_types(backend):
    with pytest.raises(ValueError, match="masks must be a torch.Tensor or numpy.ndarray"):
        ops.thin([[1, 0]])
    with pytest.raises(ValueError, match="number of thresholds must be >= 1"):
        ops.boundary_pr_counts(np.zeros((4, 4)), np.zeros((1, 4, 4), bool), 0)
    with pytest.raises(ValueError, match="edge_orientation: edges must be a float32 or float64"):
        ops.edge_orientation(np.zeros((4, 4), np.uint8))


@needs_extension
def test_opcheck(scene):
    boundaries, e = scene
    e, b = torch.from_numpy(e[:20, :30]), torch.from_numpy(boundaries[:, :20, :30])
    cases = [
        ("thin", (b[:2],)),
        ("thin", (b[0].to(torch.uint8).T,)),
        ("edge_nms", (e, ops.edge_orientation(e), 1, 5, 1.01)),
        ("correspond_pixels", (e > 0.2, b[0], 0.05)),
        ("boundary_pr_counts", (e, b, ops.bsds_thresholds(5), 0.0075, True)),
    ]
    for name, args in cases:
        torch.library.opcheck(getattr(torch.ops.sam_lightning, name).default, args)
