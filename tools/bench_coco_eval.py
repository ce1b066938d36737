"""Benchmark of our COCO mask evaluation against pycocotools' COCOeval (not a test).

Two workloads on generated data (480x640 images, polygon ground truth of all sizes, results
as compressed RLEs): class-agnostic AR@1000 of 1000 proposals per image (App. D.3; COCOeval
``useCats=0``, ``maxDets=[100, 300, 1000]``) and per-category mask AP of 100 detections per
image over 80 categories (App. D.4). Each row times the whole evaluation from the in-memory
ground truth and results (loading the results, matching, accumulating, summarising; fresh
copies of the inputs are made, and the garbage they leave collected, untimed), the best of
a few repeats, both in this process; the statistics of both sides (AR: COCOeval's six AR
statistics; AP: all twelve) are compared exactly and the largest difference printed.

``ours`` is :mod:`sam_lightning.evaluation.coco_metrics` with ``backend="auto"`` (the
native back-end for AP, whose numbers are pycocotools' bit for bit; faster-coco-eval for
AR, whose recall is identical) and each other back-end: ``native`` for AR,
``faster_coco_eval`` for AP (its precision differs in the last bit).

    python tools/bench_coco_eval.py [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import os
import time

import numpy as np
import torch
from pycocotools import mask as mask_api
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_lightning import ops
from sam_lightning.evaluation import coco_metrics

HEIGHT, WIDTH = 480, 640
AR_KEYS = ["ar@100", "ar@300", "ar@1000", "ar@1000_small", "ar@1000_medium", "ar@1000_large"]


def ellipse(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A mask with one random ellipse of about ``radius`` pixels, drawn in its window."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
    ry, rx = radius * rng.uniform(0.5, 1.5, 2)
    y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, HEIGHT))
    x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, WIDTH))
    yy, xx = np.ogrid[y0:y1, x0:x1]
    mask[y0:y1, x0:x1] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def polygon(rng: np.random.Generator, radius: float) -> list[float]:
    cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radii = radius * rng.uniform(0.6, 1.0, 12)
    xs = np.clip(cx + radii * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, HEIGHT - 1)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def workload(seed: int, images: int, per_image: int, categories: int, agnostic: bool):
    """(ground truth, results): 3-20 objects per image; results are shifted copies of the
    objects (three each for proposals) and random ellipses, scores in [0, 1]."""
    rng = np.random.default_rng(seed)
    infos, annotations, results = [], [], []
    for image_id in range(1, images + 1):
        infos.append({"id": image_id, "height": HEIGHT, "width": WIDTH, "file_name": "x.jpg"})
        masks, labels = [], []
        for _ in range(int(rng.integers(3, 21))):
            outline = polygon(rng, float(rng.choice([8, 20, 40, 80, 150])))
            rle = mask_api.merge(mask_api.frPyObjects([outline], HEIGHT, WIDTH))
            category = int(rng.integers(1, categories + 1))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()},
                "area": float(mask_api.area(rle)), "bbox": mask_api.toBbox(rle).tolist(),
                "iscrowd": 0,
            })
            mask = mask_api.decode(rle).astype(bool)
            for _ in range(3 if agnostic else 1):
                masks.append(np.roll(mask, tuple(rng.integers(-6, 7, 2)), axis=(0, 1)))
                labels.append(category)
        while len(masks) < per_image:
            masks.append(ellipse(rng, float(rng.choice([6, 15, 40, 100]))))
            labels.append(int(rng.integers(1, categories + 1)))
        rles = ops.rle_encode(torch.from_numpy(np.stack(masks[:per_image])))
        for rle, label in zip(rles, labels):
            results.append({
                "image_id": image_id, "category_id": 1 if agnostic else label,
                "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()},
                "score": float(rng.uniform()),
            })
    cats = [{"id": c, "name": str(c)} for c in range(1, categories + 1)]
    return {"images": infos, "annotations": annotations, "categories": cats}, results


def pycocotools_stats(document, results, agnostic: bool) -> np.ndarray:
    """COCOeval as a user runs it (it annotates its inputs: pass copies)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = document
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        if agnostic:
            evaluator.params.useCats = 0
            evaluator.params.maxDets = list(coco_metrics.PROPOSAL_MAX_DETS)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def ours(document, results, agnostic: bool, backend: str) -> dict[str, float]:
    if agnostic:
        return coco_metrics.proposal_ar(document, results, backend=backend)
    return coco_metrics.mask_stats(document, results, backend=backend)


def timed(functions, document, results, repeats: int) -> list[tuple[float, object]]:
    """Best time and last output of each ``function(document, results)``, the functions
    taking turns in every repeat (so that a busy moment hits both), each on fresh copies of
    the inputs made untimed."""
    best, outputs = [float("inf")] * len(functions), [None] * len(functions)
    for _ in range(repeats):
        for k, function in enumerate(functions):
            inputs = copy.deepcopy((document, results))
            gc.collect()  # the copies' collection is not the evaluation's work
            start = time.perf_counter()
            outputs[k] = function(*inputs)
            best[k] = min(best[k], time.perf_counter() - start)
    return list(zip(best, outputs))


def row(name: str, document, results, agnostic: bool, backend: str, repeats: int) -> tuple:
    keys, first = (AR_KEYS, 6) if agnostic else (coco_metrics.MASK_STATS, 0)
    (t_ref, stats), (t_ours, metrics) = timed(
        [
            lambda d, r: pycocotools_stats(d, r, agnostic),
            lambda d, r: ours(d, r, agnostic, backend),
        ],
        document,
        results,
        repeats,
    )
    values = np.array([metrics[k] for k in keys])
    gap = float(np.abs(values - stats[first : first + len(keys)]).max())
    identical = "yes" if gap == 0 else f"no (max Δ {gap:.1e})"
    if backend == "auto":
        backend = f"auto = {coco_metrics.AUTO_BACKEND['ar' if agnostic else 'ap']}"
    headline = values[2] if agnostic else values[0]
    return name, backend, t_ref, t_ours, t_ref / t_ours, identical, headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not ops.HAS_EXTENSION:
        raise SystemExit(f"compiled extension not loaded: {ops.LOAD_ERROR}")
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    ar_images, ap_images = (10, 50) if args.quick else (50, 250)
    print(f"threads: {args.threads} (cpus: {os.cpu_count()}); seconds per evaluation, best of "
          f"{repeats}; {HEIGHT}x{WIDTH} images\n")
    print("| evaluation | ours | pycocotools s | ours s | speedup | identical | AR@1000 / AP |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    document, results = workload(args.seed, ar_images, 1000, 80, agnostic=True)
    name = f"AR@1000, {ar_images} images × 1000 proposals"
    rows = [row(name, document, results, True, backend, repeats) for backend in ("auto", "native")]
    document, results = workload(args.seed + 1, ap_images, 100, 80, agnostic=False)
    name = f"mask AP, {ap_images} images × 100 detections, 80 categories"
    for backend in ("auto", "faster_coco_eval"):
        rows.append(row(name, document, results, False, backend, repeats))
    for r in rows:
        print("| {} | {} | {:.2f} | {:.2f} | {:.1f}× | {} | {:.4f} |".format(*r), flush=True)


if __name__ == "__main__":
    main()
