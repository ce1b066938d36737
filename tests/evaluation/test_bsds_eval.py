"""The BSDS boundary benchmark: known answers, the edges toolbox's definitions of ODS, OIS,
AP and R50 on hand-made curves, and agreement with pyEdgeEval (its copy of the Berkeley
matcher, randomised) within that matcher's own run-to-run spread."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from bsds_fixtures import annotator_boundaries, annotator_segmentations, detector_edges
from skimage.morphology import thin as skimage_thin

from sam_lightning import ops
from sam_lightning.evaluation import bsds_eval

EPS = np.finfo(np.float64).eps


def scenes(seed: int, count: int, h: int, w: int, annotators: int = 5) -> list[tuple]:
    """``(name, edges, boundaries)`` of generated images, detectors of varying quality."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        boundaries = annotator_boundaries(annotator_segmentations(rng, h, w, annotators, 8))
        edges = detector_edges(rng, boundaries, quality=rng.uniform(0.4, 0.9))
        out.append((f"img{i}", edges, boundaries))
    return out


# ---- known answers -----------------------------------------------------------------------


def test_ground_truth_as_prediction_scores_one_without_thinning():
    ((_, _, boundaries),) = scenes(0, 1, 120, 160, annotators=1)
    result = bsds_eval.evaluate_boundaries([("a", boundaries[0].astype(np.float64), boundaries)],
                                           thin=False)  # fmt: skip
    assert result.ods == result.ois == 1.0 and result.ods_recall == result.ods_precision == 1.0
    assert result.r50 == 1.0
    assert result.ap == 0.0  # a one-point curve: the toolbox's AP needs two recall values


def test_ground_truth_as_prediction_with_thinning():
    # Thinning keeps a subset of the ground truth, each kept pixel matches itself: precision
    # is 1 and recall the kept fraction, at every threshold (BSDS boundaries are 4-connected
    # staircases that thinning reduces to 8-connected curves).
    data = scenes(1, 2, 160, 240)
    kept = sum(int(skimage_thin(b[0]).sum()) for _, _, b in data)
    total = sum(int(b[0].sum()) for _, _, b in data)
    single = [(n, b[0].astype(np.float64), b[:1]) for n, _, b in data]
    result = bsds_eval.evaluate_boundaries(single)
    assert (result.precision == 1.0).all() and (result.recall == kept / total).all()
    assert result.ods == pytest.approx(2 * (kept / total) / (1 + kept / total), abs=1e-15)
    all_five = bsds_eval.evaluate_boundaries([(n, b[0].astype(np.float64), b) for n, _, b in data])
    assert all_five.ods_precision == 1.0 and 0 < all_five.ods_recall < result.ods_recall


def test_empty_prediction_scores_zero():
    data = [(n, np.zeros_like(e), b) for n, e, b in scenes(2, 2, 60, 90)]
    result = bsds_eval.evaluate_boundaries(data, thresholds=9)
    assert result.ods == result.ois == result.ap == 0.0
    assert (result.counts[..., [0, 2, 3]] == 0).all() and (result.counts[..., 1] > 0).all()
    assert math.isnan(result.r50)  # precision never reaches 50%


def test_one_pixel_shift_within_the_tolerance_still_matches():
    ((_, _, boundaries),) = scenes(3, 1, 160, 240, annotators=1)
    gt = boundaries[0]
    shifted = np.zeros_like(gt)
    shifted[1:, :] = gt[:-1, :]  # 0.0075 * diagonal = 2.2 pixels
    counts = bsds_eval.evaluate_image(shifted.astype(np.uint8) * 255, boundaries, [0.5],
                                      thin=False)  # fmt: skip
    assert counts.tolist() == [[shifted.sum(), gt.sum(), shifted.sum(), shifted.sum()]]
    far = bsds_eval.evaluate_image(shifted.astype(np.uint8) * 255, boundaries, [0.5], 0.0,
                                   thin=False)  # fmt: skip
    assert far[0, 0] == (shifted & gt).sum() < shifted.sum()


def test_uint8_maps_are_read_as_value_over_255():
    ((_, edges, boundaries),) = scenes(4, 1, 50, 70)
    as_uint8 = np.round(edges * 255).astype(np.uint8)
    assert np.array_equal(
        bsds_eval.evaluate_image(as_uint8, boundaries, 19),
        bsds_eval.evaluate_image(as_uint8 / 255.0, boundaries, 19),
    )


def test_counts_are_deterministic_and_thread_independent():
    ((_, edges, boundaries),) = scenes(5, 1, 120, 180)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bsds_eval.evaluate_image(edges, boundaries)
        torch.set_num_threads(2)
        two = bsds_eval.evaluate_image(edges, boundaries)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, two) and np.array_equal(
        one, bsds_eval.evaluate_image(edges, boundaries)
    )


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"floating-point edges must lie in \[0, 1\]"):
        bsds_eval.evaluate_image(np.full((4, 4), 1.5), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match=r"boundaries must be A x 4 x 4"):
        bsds_eval.evaluate_image(np.zeros((4, 4)), np.zeros((1, 4, 5), bool))
    with pytest.raises(ValueError, match="no images to evaluate"):
        bsds_eval.evaluate_boundaries([])
    with pytest.raises(ValueError, match=r"counts must be N x 3 x 4"):
        bsds_eval.summarize(np.zeros((2, 4, 4)), np.arange(3) / 3)


# ---- the edges toolbox's definitions on hand-made curves ---------------------------------


def counts_of(recall, precision, total=10_000):
    """N x K x 4 counts of one image whose curve is (recall, precision)."""
    r, p = np.asarray(recall), np.asarray(precision)
    return np.stack([r * total, np.full_like(r, total), p * total, np.full_like(p, total)], -1)[
        None
    ]


def test_ods_interpolates_between_thresholds():
    # F is 0 at both thresholds; along the segment F(a) = 2a(1 - a), sampled at 100 points.
    result = bsds_eval.summarize(counts_of([1.0, 0.0], [0.0, 1.0]), np.array([0.2, 0.4]))
    a = np.linspace(0, 1, 100)
    k = int(np.argmax(2 * a * (1 - a)))
    assert result.ods == pytest.approx(2 * a[k] * (1 - a[k]), abs=1e-15)
    assert result.ods_recall == pytest.approx(1 - a[k]) and result.ods_threshold == pytest.approx(
        0.2 + 0.2 * a[k]
    )
    assert result.ois == 0.0  # OIS takes each image's best threshold, without interpolation


def test_ois_sums_counts_at_each_images_best_threshold():
    image1 = [[50, 100, 90, 100], [80, 100, 40, 100]]  # F = .643, .533: best is threshold 1
    image2 = [[10, 100, 10, 100], [60, 100, 60, 100]]  # best is threshold 2
    result = bsds_eval.summarize(np.array([image1, image2]), np.array([0.3, 0.6]))
    recall, precision = (50 + 60) / 200, (90 + 60) / 200
    assert result.ois_recall == recall and result.ois_precision == precision
    assert result.ois == pytest.approx(2 * recall * precision / (recall + precision))
    assert [image["name"] for image in result.per_image] == ["0", "1"]


def matlab_interp1(x, y, query):
    """MATLAB interp1 (linear; NaN outside the samples), for sample points in any order."""
    order = np.argsort(x)
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    out = []
    for q in query:
        if q < x[0] or q > x[-1]:
            out.append(np.nan)
            continue
        j = min(np.searchsorted(x, q, side="right") - 1, len(x) - 2)
        out.append(y[j] + (y[j + 1] - y[j]) * (q - x[j]) / (x[j + 1] - x[j]))
    return np.array(out)


def test_ap_and_r50_follow_edgesevaldir():
    recall = np.array([0.9, 0.8, 0.8, 0.55, 0.3, 0.3])  # repeated recall: first one kept
    precision = np.array([0.35, 0.45, 0.5, 0.62, 0.8, 0.9])
    result = bsds_eval.summarize(counts_of(recall, precision), np.linspace(0.1, 0.6, 6))
    keep = [0, 1, 3, 4]  # MATLAB unique(R) keeps the first of 0.8 and of 0.3
    values = matlab_interp1(recall[keep], precision[keep], np.arange(101) / 100)
    assert result.ap == pytest.approx(np.nansum(values) / 100, abs=1e-12)
    # R50: recall where the precision of the kept points crosses 0.5 (between .45 and .62).
    expected_r50 = 0.8 + (0.55 - 0.8) * (0.5 - 0.45) / (0.62 - 0.45)
    assert result.r50 == pytest.approx(expected_r50, abs=1e-12)
    high = bsds_eval.summarize(counts_of([0.7, 0.4], [0.6, 0.9]), np.array([0.3, 0.6]))
    assert high.r50 == pytest.approx(0.7)  # precision above 0.5 everywhere: the lowest one


def test_pr_curve_plot_is_written(tmp_path):
    result = bsds_eval.evaluate_boundaries(scenes(6, 2, 60, 90), thresholds=9)
    path = tmp_path / "plots" / "pr.png"
    bsds_eval.plot_pr_curve(result, path, label="test")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_edge_maps_round_trip_through_png(tmp_path):
    ((_, edges, _),) = scenes(7, 1, 30, 40)
    bsds_eval.write_edge_map(tmp_path / "e.png", edges)
    assert np.array_equal(bsds_eval.read_edge_map(tmp_path / "e.png"), np.round(edges * 255) / 255)


# ---- agreement with pyEdgeEval -----------------------------------------------------------


def pyedgeeval_counts(data, thresholds: np.ndarray, own_thinning: bool = False) -> np.ndarray:
    """Counts with pyEdgeEval's correspond_pixels (Berkeley's matcher) as edgesEvalImg does,
    thinning with scikit-image (= bwmorph) or, with ``own_thinning``, pyEdgeEval's whole
    per-image evaluation (its own thinning)."""
    from pyEdgeEval._lib import correspond_pixels
    from pyEdgeEval.common.binary_label.evaluate_boundaries import (
        evaluate_boundaries_threshold_multiple_gts,
    )

    out = np.zeros((len(data), len(thresholds), 4))
    for i, (_, edges, boundaries) in enumerate(data):
        if own_thinning:
            gts = [g.astype(np.uint8) for g in boundaries]
            counts = evaluate_boundaries_threshold_multiple_gts(thresholds, edges, gts)
            out[i] = np.stack(counts, 1)
            continue
        for k, t in enumerate(thresholds):
            pred = skimage_thin(edges >= max(EPS, t)).astype(np.float64)
            hits = np.zeros(pred.shape, dtype=bool)
            for gt in boundaries:
                match_pred, match_gt, _, _ = correspond_pixels(pred, gt.astype(np.float64), 0.0075)
                out[i, k, 0] += (match_gt > 0).sum()
                out[i, k, 1] += gt.sum()
                hits |= match_pred > 0
            out[i, k, 2:] = hits.sum(), pred.sum()
    return out


def pyedgeeval_summary(counts: np.ndarray, thresholds: np.ndarray) -> dict:
    from pyEdgeEval.common.binary_label.calculate_metrics import calculate_metrics

    samples = [{"name": str(i), "index": i} for i in range(len(counts))]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _, _, overall = calculate_metrics(
            lambda sample: tuple(counts[sample["index"]].T), thresholds.tolist(), samples, nproc=1
        )
    return overall


def test_our_summary_of_pyedgeeval_counts_equals_pyedgeevals():
    thresholds = ops.bsds_thresholds(15).numpy()
    data = scenes(8, 3, 60, 90)
    counts = pyedgeeval_counts(data, thresholds)
    theirs = pyedgeeval_summary(counts, thresholds)
    ours = bsds_eval.summarize(counts, thresholds)
    assert ours.ois == pytest.approx(theirs["OIS_f1"], abs=1e-12)
    assert ours.ap == pytest.approx(theirs["AUC"], abs=1e-12)  # its "AP" is another quantity
    assert ours.ods == pytest.approx(theirs["ODS_f1"], abs=1e-4)  # 100 vs 101 samples/segment


def assert_within_spread(ours: dict, runs: list[dict], tolerance: float) -> None:
    """Each score of ours is within the runs' spread (max - min) plus ``tolerance`` of
    their mean."""
    for key in ("ods", "ois", "ap", "r50"):
        values = np.array([run[key] for run in runs])
        if np.isnan(values).all():  # R50 when the precision never reaches 50%
            assert math.isnan(ours[key]), key
            continue
        spread = values.max() - values.min()
        assert abs(ours[key] - values.mean()) <= spread + tolerance, (key, ours[key], values)


def agreement(seed: int, count: int, h: int, w: int, num_thresholds: int, runs: int) -> tuple:
    """Our scores, pyEdgeEval's runs' scores, the relative excess of our matched pairs and
    the recall of one ground-truth pixel, on generated images."""
    thresholds = ops.bsds_thresholds(num_thresholds).numpy()
    data = scenes(seed, count, h, w)
    ours = bsds_eval.evaluate_boundaries(data, thresholds)
    reference = [pyedgeeval_counts(data, thresholds) for _ in range(runs)]
    # Ours is a maximum matching: never fewer pairs than Berkeley's, for every annotator.
    assert all((ours.counts[..., 0] >= counts[..., 0]).all() for counts in reference)
    assert all(
        np.array_equal(ours.counts[..., [1, 3]], counts[..., [1, 3]]) for counts in reference
    )
    pairs = ours.counts[..., 0].sum()
    excess = max(pairs - counts[..., 0].sum() for counts in reference) / pairs
    summaries = [bsds_eval.summarize(counts, thresholds).metrics() for counts in reference]
    return ours.metrics(), summaries, excess, 1 / ours.counts[:, 0, 1].sum()


def test_metrics_agree_with_pyedgeeval_within_its_run_to_run_spread():
    # On small images (matching radius about 1 pixel) Berkeley's random under-matching is
    # within its own run-to-run spread: scores agree within that spread and one pixel.
    ours, runs, excess, pixel = agreement(seed=9, count=3, h=80, w=120, num_thresholds=15, runs=5)
    assert excess < 1e-3
    assert_within_spread(ours, runs, tolerance=pixel)


@pytest.mark.slow
def test_metrics_agree_with_pyedgeeval_at_bsds_size():
    # At 321 x 481 (radius 4.3 pixels) Berkeley's matcher misses about 1e-4 of the pairs in
    # every run, more than its runs differ from each other: the scores differ by 1e-4 to
    # 2e-4 (measured), beyond that spread but below the 3 decimals the benchmark reports.
    ours, runs, excess, pixel = agreement(seed=10, count=2, h=321, w=481, num_thresholds=99,
                                          runs=3)  # fmt: skip
    assert 0 <= excess < 5e-4
    assert_within_spread(ours, runs, tolerance=1e-3)
