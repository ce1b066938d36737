"""Benchmark of the mask generator's post-processing operators against the official code.

References: ``segment_anything.utils.amg`` (calculate_stability_score, batched_mask_to_box,
remove_small_regions with OpenCV), OpenCV's connectedComponentsWithStats, and for NMS the
torchvision stand-in of ``tests/reference_shims`` (a Python loop with torchvision's
semantics, not torchvision's C++ kernel: that ratio is indicative only). Both sides run in
this process on the same inputs; outputs are checked to be identical before timing. Rows
report the best of several repeats in ms per mask (per call for NMS).

    python tools/bench_postprocess.py [--threads N] [--quick]

The official package and the shim are imported from ``tests/`` (``tests/official_sam.py``),
which this script puts on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(_TESTS))

from benchmarking import best_time  # noqa: E402  (tools/, first on sys.path)
from official_sam import import_official  # noqa: E402

from sam_lightning import ops  # noqa: E402


def torchvision_shim():
    path = _TESTS / "reference_shims" / "torchvision" / "ops" / "boxes.py"
    spec = importlib.util.spec_from_file_location("torchvision_shim_boxes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blob_logits(rng: np.random.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """Mask-decoder-like logits: smooth blobs (upsampled 24 x 36 noise) plus weaker detail
    (upsampled 256 x 384 noise) that leaves small islands and holes after thresholding,
    shifted so that 5-40% of each mask is above 0."""

    def up(low_h: int, low_w: int) -> torch.Tensor:
        low = torch.from_numpy(rng.standard_normal((n, 1, low_h, low_w))).float()
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0]

    logits = 4 * up(24, 36) + 0.8 * up(256, 384)
    foreground = torch.from_numpy(rng.uniform(0.05, 0.4, n)).float()
    sample = logits[:, ::8, ::8].reshape(n, -1)
    cut = torch.stack([s.quantile(1 - f) for s, f in zip(sample, foreground)])
    return logits - cut[:, None, None]


def clustered_boxes(rng: np.random.Generator, n: int, h: int, w: int):
    """n XYXY float32 boxes around n // 10 objects (near-duplicates, as the point grid of the
    mask generator produces) with distinct random scores."""
    objects = max(n // 10, 1)
    centre = rng.uniform([0, 0], [w, h], (objects, 2))
    size = rng.uniform(20, 0.5 * min(h, w), (objects, 2))
    which = rng.integers(0, objects, n)
    jitter = rng.normal(0, 0.05, (n, 4)) * np.tile(size[which], 2)
    boxes = np.concatenate([centre[which] - size[which] / 2, centre[which] + size[which] / 2], 1)
    boxes = np.round(np.clip(boxes + jitter, 0, [w, h, w, h]))
    scores = 0.8 + 0.2 * rng.permutation(n) / n
    return torch.from_numpy(boxes).float(), torch.from_numpy(scores).float()


def check(name: str, equal: bool) -> None:
    if not equal:
        raise AssertionError(f"{name}: outputs differ from the reference")


def mask_rows(amg, rng, n: int, h: int, w: int, area: float) -> list[tuple]:
    logits = blob_logits(rng, n, h, w)
    masks = logits > 0
    masks_np = masks.numpy()
    half = logits.half()

    def stability_ref(x):
        return amg.calculate_stability_score(x, 0.0, 1.0)

    def boxes_ref():
        return amg.batched_mask_to_box(masks)

    def cc_ref():
        return [cv2.connectedComponentsWithStats(m.astype(np.uint8), 8) for m in masks_np]

    def remove_ref():
        out, changed = [], []
        for mask in masks_np:
            mask, holes = amg.remove_small_regions(mask, area, "holes")
            mask, islands = amg.remove_small_regions(mask, area, "islands")
            out.append(mask)
            changed.append(holes or islands)
        return np.stack(out), np.array(changed)

    def rle_ref():  # the official generator's path: uncompressed RLE, then pycocotools
        return [amg.coco_encode_rle(rle)["counts"] for rle in amg.mask_to_rle_pytorch(masks)]

    def rle_ours():
        return [rle["counts"] for rle in ops.rle_encode(masks)]

    def remove_ours():
        mask, holes = ops.remove_small_regions(masks, area, "holes")
        mask, islands = ops.remove_small_regions(mask, area, "islands")
        return mask, holes | islands

    for x in (logits, half):
        ours, ref = ops.stability_score(x, 0.0, 1.0), stability_ref(x)
        check("stability_score", torch.equal(ours.view(torch.int32), ref.view(torch.int32)))
    check("masks_to_boxes", torch.equal(ops.masks_to_boxes(masks), boxes_ref()))
    check("rle_encode", [c.encode() for c in rle_ref()] == rle_ours())
    labels = ops.connected_components(masks)[0].numpy()
    check("connected_components", np.array_equal(labels, np.stack([r[1] for r in cc_ref()])))
    (ref_masks, ref_changed), (our_masks, our_changed) = remove_ref(), remove_ours()
    check("remove_small_regions", np.array_equal(our_masks.numpy(), ref_masks))
    check("remove_small_regions changed", np.array_equal(our_changed.numpy(), ref_changed))
    changed = int(ref_changed.sum())
    return [
        ("stability_score float32", lambda: stability_ref(logits),
         lambda: ops.stability_score(logits, 0.0, 1.0), n),
        ("stability_score float16", lambda: stability_ref(half),
         lambda: ops.stability_score(half, 0.0, 1.0), n),
        ("masks_to_boxes", boxes_ref, lambda: ops.masks_to_boxes(masks), n),
        ("RLE: mask_to_rle_pytorch + coco_encode_rle vs rle_encode", rle_ref, rle_ours, n),
        ("connected_components (ref: cv2 WithStats)", cc_ref,
         lambda: ops.connected_components(masks), n),
        (f"remove_small_regions holes+islands, area {area:g} ({changed}/{n} changed)",
         remove_ref, remove_ours, n),
    ]  # fmt: skip


def nms_rows(shim, rng, n: int, h: int, w: int) -> list[tuple]:
    boxes, scores = clustered_boxes(rng, n, h, w)
    zeros = torch.zeros(n, dtype=torch.int64)
    idxs = torch.from_numpy(rng.integers(0, 4, n))

    def per_category_ref():  # torchvision's vanilla path (the shim takes it for n > 1000)
        return shim.batched_nms(boxes, scores, idxs, 0.7)

    check("nms", torch.equal(ops.nms(boxes, scores, 0.7), shim.nms(boxes, scores, 0.7)))
    expected = shim.batched_nms(boxes, scores, zeros, 0.7)
    check(
        "batched_nms one category",
        torch.equal(ops.batched_nms(boxes, scores, zeros, 0.7), expected),
    )
    if n > 1000:  # distinct scores: the shim's unstable final sort has no ties to order
        check(
            "batched_nms",
            torch.equal(ops.batched_nms(boxes, scores, idxs, 0.7), per_category_ref()),
        )
    kept = len(ops.nms(boxes, scores, 0.7))
    rows = [
        (f"nms, {n} boxes ({kept} kept) [shim]", lambda: shim.nms(boxes, scores, 0.7),
         lambda: ops.nms(boxes, scores, 0.7), 1),
        (f"batched_nms one category, {n} boxes [shim]",
         lambda: shim.batched_nms(boxes, scores, zeros, 0.7),
         lambda: ops.batched_nms(boxes, scores, zeros, 0.7), 1),
    ]  # fmt: skip
    if n > 1000:
        rows.append(
            (f"batched_nms 4 categories, {n} boxes [shim]", per_category_ref,
             lambda: ops.batched_nms(boxes, scores, idxs, 0.7), 1)
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer masks and repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not ops.HAS_EXTENSION:
        raise SystemExit(f"compiled extension not loaded: {ops.LOAD_ERROR}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(args.seed)
    repeats = 2 if args.quick else 5
    n = 4 if args.quick else 16
    h, w = 1500, 2250
    amg = import_official().utils.amg
    shim = torchvision_shim()
    print(f"threads: {args.threads}; best of {repeats}; ms per mask (per call for NMS)")
    print("[shim] = tests/reference_shims, a Python stand-in for torchvision: indicative only\n")
    print("| case | operation | reference ms | ours ms | speedup |")
    print("| --- | --- | ---: | ---: | ---: |")
    sections = [(f"{h}×{w}, N={n}", mask_rows(amg, rng, n, h, w, area=100))]
    for count in (1500, 3000):
        sections.append((f"boxes in {h}×{w}", nms_rows(shim, rng, count, h, w)))
    for label, rows in sections:
        for name, reference, ours, count in rows:
            t_ref = best_time(reference, repeats) / count * 1e3
            t_ours = best_time(ours, repeats) / count * 1e3
            print(f"| {label} | {name} | {t_ref:.3f} | {t_ours:.3f} | {t_ref / t_ours:.1f}× |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
