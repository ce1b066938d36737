"""Benchmark of the BSDS boundary evaluation against pyEdgeEval (its copy of the Berkeley
benchmark code), in one process on the same generated data.

Data: BSDS-sized images (321 x 481) with 5 annotators' boundaries and a detector's 8-bit
edge map (``tests/evaluation/bsds_fixtures.py``), 99 thresholds, max_dist 0.0075.

* Speed: ours on ``--images`` images; pyEdgeEval's per-image evaluation
  (``evaluate_boundaries_threshold_multiple_gts``: its thinning and ``correspond_pixels``)
  on the first ``--reference-images`` of them (about 50 s each), extrapolated per image.
* Agreement: ``--runs`` runs of pyEdgeEval's matcher, which is randomised, on the same
  thinned maps as ours (scikit-image's ``thin`` = bwmorph, as the benchmark thins) on the
  first ``--agreement-images``: matched pairs (ours is a maximum matching) and the
  dataset scores, with the spread of pyEdgeEval's runs; plus pyEdgeEval's whole pipeline,
  whose own thinning keeps a few pixels that bwmorph removes.

    python tools/bench_bsds.py [--images 200] [--reference-images 5] [--agreement-images 2]
        [--runs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.morphology import thin as skimage_thin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "evaluation"))
from bsds_fixtures import annotator_boundaries, annotator_segmentations, detector_edges  # noqa: E402

from sam_lightning import ops  # noqa: E402
from sam_lightning.evaluation import bsds_eval  # noqa: E402

H, W, ANNOTATORS = 321, 481, 5
EPS = float(np.finfo(np.float64).eps)


def generate(count: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    data = []
    for i in range(count):
        boundaries = annotator_boundaries(annotator_segmentations(rng, H, W, ANNOTATORS, 24))
        data.append(
            (f"{i:03d}", detector_edges(rng, boundaries, rng.uniform(0.4, 0.9)), boundaries)
        )
    return data


def pyedgeeval_pipeline(data, thresholds: np.ndarray) -> np.ndarray:
    """pyEdgeEval's per-image evaluation (its thinning and matcher): N x K x 4 counts."""
    from pyEdgeEval.common.binary_label.evaluate_boundaries import (
        evaluate_boundaries_threshold_multiple_gts,
    )

    out = []
    for _, edges, boundaries in data:
        gts = [g.astype(np.uint8) for g in boundaries]
        out.append(np.stack(evaluate_boundaries_threshold_multiple_gts(thresholds, edges, gts), 1))
    return np.stack(out)


def pyedgeeval_matcher(data, thresholds: np.ndarray) -> np.ndarray:
    """pyEdgeEval's correspond_pixels on bwmorph-thinned maps, as edgesEvalImg."""
    from pyEdgeEval._lib import correspond_pixels

    out = np.zeros((len(data), len(thresholds), 4))
    for i, (_, edges, boundaries) in enumerate(data):
        for k, t in enumerate(thresholds):
            pred = skimage_thin(edges >= max(EPS, t)).astype(np.float64)
            hits = np.zeros(pred.shape, dtype=bool)
            for gt in boundaries:
                match_pred, match_gt, _, _ = correspond_pixels(pred, gt.astype(np.float64), 0.0075)
                out[i, k] += [(match_gt > 0).sum(), gt.sum(), 0, 0]
                hits |= match_pred > 0
            out[i, k, 2:] = hits.sum(), pred.sum()
    return out


def score_row(name: str, metrics: list[dict]) -> str:
    cells = []
    for key in ("ods", "ois", "ap", "r50"):
        values = np.array([m[key] for m in metrics])
        spread = f" ± {(values.max() - values.min()) / 2:.1e}" if len(values) > 1 else ""
        cells.append(f"{values.mean():.5f}{spread}")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--reference-images", type=int, default=5)
    parser.add_argument("--agreement-images", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not ops.HAS_EXTENSION:
        raise SystemExit(f"compiled extension not loaded: {ops.LOAD_ERROR}")
    torch.set_num_threads(args.threads)
    thresholds = ops.bsds_thresholds(99).numpy()
    data = generate(max(args.images, args.reference_images, args.agreement_images), args.seed)
    print(f"{H}×{W}, {ANNOTATORS} annotators, 99 thresholds; ours with {args.threads} thread(s), "
          "pyEdgeEval single-threaded\n")  # fmt: skip

    start = time.perf_counter()
    ours = bsds_eval.evaluate_boundaries(data[: args.images], thresholds)
    t_ours = (time.perf_counter() - start) / args.images
    start = time.perf_counter()
    reference_counts = pyedgeeval_pipeline(data[: args.reference_images], thresholds)
    t_ref = (time.perf_counter() - start) / args.reference_images
    print("| images | pyEdgeEval s / image-threshold | ours s / image-threshold | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| {args.images} (pyEdgeEval: {args.reference_images}) | {t_ref / 99:.4f} | "
          f"{t_ours / 99:.5f} | {t_ref / t_ours:.0f}× |")  # fmt: skip
    print(f"\nwhole set: ours {t_ours * args.images:.1f} s, pyEdgeEval ≈ "
          f"{t_ref * args.images / 60:.0f} min (extrapolated)\n")  # fmt: skip

    subset = data[: args.agreement_images]
    ours_subset = bsds_eval.evaluate_boundaries(subset, thresholds)
    runs = [pyedgeeval_matcher(subset, thresholds) for _ in range(args.runs)]
    pairs = np.array([r[..., 0].sum() for r in runs])
    ours_pairs = ours_subset.counts[..., 0].sum()
    print(
        f"matched pairs on {len(subset)} images × 99 thresholds × {ANNOTATORS} annotators "
        f"(same bwmorph-thinned maps): ours {ours_pairs}, pyEdgeEval runs "
        f"{pairs.astype(int).tolist()}: ours more by {(ours_pairs - pairs.mean()) / ours_pairs:.2e}"
        f" (relative); its runs differ by up to {(pairs.max() - pairs.min()) / ours_pairs:.2e}"
    )
    never_fewer = all((ours_subset.counts[..., 0] >= r[..., 0]).all() for r in runs)
    print(f"ours >= pyEdgeEval for every image and threshold: {never_fewer}\n")
    pipeline = bsds_eval.summarize(reference_counts[: len(subset)], thresholds)
    extra = (reference_counts[: len(subset), :, 3] - ours_subset.counts[..., 3]).sum()
    print(f"| {len(subset)} images | ODS | OIS | AP | R50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(score_row("ours", [ours_subset.metrics()]))
    runs_metrics = [bsds_eval.summarize(r, thresholds).metrics() for r in runs]
    print(score_row(f"pyEdgeEval matcher, {args.runs} runs (mean ± half range)", runs_metrics))
    print(score_row("pyEdgeEval pipeline (its thinning: "
                    f"{extra:+.0f} predicted pixels)", [pipeline.metrics()]))  # fmt: skip
    print(
        f"\nours on all {args.images} images: "
        + ", ".join(
            f"{k} {v:.4f}" for k, v in ours.metrics().items() if k in ("ods", "ois", "ap", "r50")
        )
    )


if __name__ == "__main__":
    main()
