"""Benchmark of sam_lightning's COCO RLE operators against pycocotools (not a test).

Both run in this process on the same inputs; outputs are checked to be identical before
timing. Each row reports the best of several repeats in ms per mask (per pair for IoU).

    python tools/bench_rle.py [--threads N] [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from benchmarking import best_time  # noqa: E402  (tools/, first on sys.path)
from pycocotools import mask as coco

from sam_lightning import ops


def realistic(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Masks of 10-40% foreground made of a few random ellipses."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for mask in masks:
        target = rng.uniform(0.1, 0.4)
        while mask.mean() < target:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
            y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, h))
            x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, w))
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def noise(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Independent random pixels: the most runs possible, the worst case."""
    return (rng.random((n, h, w)) < 0.5).astype(np.uint8)


def check(name: str, ours, theirs) -> None:
    equal = ours == theirs if isinstance(ours, list) else np.array_equal(ours, theirs)
    if not equal:
        raise AssertionError(f"{name}: outputs differ from pycocotools")


def bench_case(label: str, masks: np.ndarray, repeats: int) -> list[tuple]:
    n = len(masks)
    tensor = torch.from_numpy(masks)
    fortran = np.asfortranarray(masks.transpose(1, 2, 0))
    fortran_view = torch.from_numpy(fortran).permute(2, 0, 1)
    rles = coco.encode(fortran)
    pairs = min(100, 4 * n)
    dt = [rles[i % n] for i in range(pairs)]
    gt = [rles[(3 * i + 1) % n] for i in range(pairs)]
    crowd = [i % 5 == 0 for i in range(pairs)]

    def coco_from_row_major():
        return coco.encode(np.asfortranarray(masks.transpose(1, 2, 0)))

    def coco_decode_row_major():
        return np.ascontiguousarray(coco.decode(rles).transpose(2, 0, 1))

    check("encode row-major", ops.rle_encode(tensor), rles)
    check("encode Fortran view", ops.rle_encode(fortran_view), rles)
    check("decode", ops.rle_decode(rles).numpy(), masks)
    check("area", ops.rle_area(rles).numpy(), coco.area(rles))
    check("toBbox", ops.rle_to_bbox(rles).numpy(), coco.toBbox(rles))
    check("iou", ops.rle_iou(dt, gt, crowd).numpy(), coco.iou(dt, gt, crowd))

    rows = [
        ("encode, row-major N×H×W", coco_from_row_major, lambda: ops.rle_encode(tensor), n),
        (
            "encode, Fortran input",
            lambda: coco.encode(fortran),
            lambda: ops.rle_encode(fortran_view),
            n,
        ),
        (
            "encode, Fortran (ref) vs row-major (ours)",
            lambda: coco.encode(fortran),
            lambda: ops.rle_encode(tensor),
            n,
        ),
        ("decode to row-major N×H×W", coco_decode_row_major, lambda: ops.rle_decode(rles), n),
        (
            "decode (ref: bare Fortran decode)",
            lambda: coco.decode(rles),
            lambda: ops.rle_decode(rles),
            n,
        ),
        ("area", lambda: coco.area(rles), lambda: ops.rle_area(rles), n),
        ("toBbox", lambda: coco.toBbox(rles), lambda: ops.rle_to_bbox(rles), n),
        (
            f"iou {pairs}×{pairs} (per pair)",
            lambda: coco.iou(dt, gt, crowd),
            lambda: ops.rle_iou(dt, gt, crowd),
            pairs * pairs,
        ),
    ]
    results = []
    for name, reference, ours, count in rows:
        t_ref = best_time(reference, repeats) / count * 1e3
        t_ours = best_time(ours, repeats) / count * 1e3
        results.append((label, name, t_ref, t_ours, t_ref / t_ours))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer masks and repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not ops.HAS_EXTENSION:
        raise SystemExit(f"compiled extension not loaded: {ops.LOAD_ERROR}")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    repeats = 3 if args.quick else 7
    cases = []
    for h, w in ((1024, 1024), (1500, 2250)):
        cases.append((f"realistic {h}×{w}", realistic, 16 if args.quick else 64, h, w))
        cases.append((f"noise {h}×{w}", noise, 2 if args.quick else 8, h, w))
    print(f"threads: {args.threads}; ms per mask (per pair for iou), best of {repeats}\n")
    print("| case | operation | pycocotools ms | ours ms | speedup |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, make, n, h, w in cases:
        for row in bench_case(f"{label}, N={n}", make(rng, n, h, w), repeats):
            print("| {} | {} | {:.4f} | {:.4f} | {:.1f}× |".format(*row), flush=True)


if __name__ == "__main__":
    main()
