"""Times the official SamAutomaticMaskGenerator and ours side by side on the same weights.

    .venv/bin/python tools/bench_amg.py [--model-type vit_b] [--size 1024 1536]
        [--points-per-side 32] [--params all|default] [--min-mask-region-area 0]

Both generators get the same random weights (official initialisation, seed 0, loaded
strictly into our model) and the same image (skimage's ``coffee()`` resized). Random
weights make image-wide masks that the default thresholds reject, so ``--params all``
(the default) sets the IoU and stability thresholds to 0 and NMS to 1.0: every one of the
``3 * points_per_side**2`` masks goes through every post-processing step, the heaviest
case. ``--params default`` keeps the official defaults (almost nothing passes the IoU
filter, so this mostly times the encoder and decoder).

Each run is split into encoder (``set_image``), decoder (prompt encoder + mask decoder),
upscaling of the mask logits to the image (``postprocess_masks``) and post-processing
(everything else: stability, thresholds, boxes, NMS, RLE, records). The outputs are checked
to agree (same number of masks; in order, IoU >= 0.99 and scores within 1e-4).
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarking import bench_image  # noqa: E402  (tools/, first on sys.path)
from official_sam import import_official  # noqa: E402

from sam_lightning.inference import SamAutomaticMaskGenerator  # noqa: E402
from sam_lightning.modeling.build import build_sam  # noqa: E402

PARAMS = {
    "all": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    "default": {},
}
STAGES = ("encoder", "decoder", "upscaling")


class StageTimer:
    """Accumulates the wall-clock time spent in wrapped callables, per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, attribute: str, stage: str) -> None:
        function: Callable = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, attribute, timed)


def run(generator, image: np.ndarray, timer: StageTimer) -> tuple[list[dict], dict[str, float]]:
    timer.seconds.clear()
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    stages = {stage: timer.seconds[stage] for stage in STAGES}
    stages["post-processing"] = total - sum(stages.values())
    stages["total"] = total
    return records, stages


def official_generator(official, model, params: dict) -> tuple[object, StageTimer]:
    generator = official.SamAutomaticMaskGenerator(model, **params)
    timer = StageTimer()
    timer.wrap(generator.predictor, "set_image", "encoder")
    timer.wrap(model.prompt_encoder, "forward", "decoder")
    timer.wrap(model.mask_decoder, "forward", "decoder")
    timer.wrap(model, "postprocess_masks", "upscaling")
    return generator, timer


def our_generator(model, params: dict) -> tuple[SamAutomaticMaskGenerator, StageTimer]:
    generator = SamAutomaticMaskGenerator(model, **params)
    timer = StageTimer()
    timer.wrap(generator.predictor, "set_image", "encoder")
    timer.wrap(model, "decode", "decoder")
    timer.wrap(model, "postprocess_masks", "upscaling")
    return generator, timer


def check_agreement(reference: list[dict], ours: list[dict]) -> str | None:
    """None if every official mask has its own match among ours (IoU >= 0.99, predicted IoU
    and stability within 1e-4), else what differs. Masks are matched by content: masks whose
    scores differ by float noise may come out of NMS in a different order."""
    if len(ours) != len(reference):
        return f"{len(ours)} masks vs official {len(reference)}"
    order = sorted(range(len(ours)), key=lambda j: ours[j]["predicted_iou"])
    scores = [ours[j]["predicted_iou"] for j in order]
    unused = set(range(len(ours)))
    for i, ref in enumerate(reference):
        low = bisect.bisect_left(scores, ref["predicted_iou"] - 1e-4)
        high = bisect.bisect_right(scores, ref["predicted_iou"] + 1e-4)
        candidates = [
            j
            for j in order[low:high]
            if j in unused
            and np.allclose(
                ref["stability_score"], ours[j]["stability_score"], atol=1e-4, equal_nan=True
            )
        ]
        best, best_iou = None, -1.0
        for j in candidates:
            both_empty = ref["area"] == 0 and ours[j]["area"] == 0
            iou = (
                1.0
                if both_empty
                else mask_utils.iou([ref["segmentation"]], [ours[j]["segmentation"]], [0])[0, 0]
            )
            if iou > best_iou:
                best, best_iou = j, iou
        if best is None or best_iou < 0.99:
            return f"official mask {i} has no match (best IoU {best_iou:.4f})"
        unused.remove(best)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Official vs our automatic mask generator.")
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1536), metavar=("H", "W"))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--params", choices=sorted(PARAMS), default="all")
    parser.add_argument("--min-mask-region-area", type=int, default=0)
    parser.add_argument("--skip-official", action="store_true", help="time ours only")
    args = parser.parse_args(argv)

    official = import_official()
    torch.manual_seed(0)
    reference_model = official.sam_model_registry[args.model_type]().eval()
    our_model = build_sam(args.model_type)
    our_model.load_state_dict(reference_model.state_dict(), strict=True)
    image = bench_image(*args.size)
    params = dict(
        points_per_side=args.points_per_side,
        min_mask_region_area=args.min_mask_region_area,
        output_mode="coco_rle",
        **PARAMS[args.params],
    )

    columns = {}
    ours, ours_timer = our_generator(our_model, params)
    our_records, columns["ours"] = run(ours, image, ours_timer)
    if not args.skip_official:
        reference, reference_timer = official_generator(official, reference_model, params)
        with torch.no_grad():
            ref_records, columns["official"] = run(reference, image, reference_timer)

    height, width = args.size
    print(
        f"{args.model_type}, image {height}x{width}, points_per_side={args.points_per_side}, "
        f"params={args.params}, min_mask_region_area={args.min_mask_region_area}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{len(our_records)} masks out\n"
    )
    names = list(columns)[::-1]
    header = " | ".join(names)
    ratio = "official / ours |" if "official" in columns else ""
    print(f"| stage (s) | {header} | {ratio}\n|---|" + "---:|" * (len(names) + bool(ratio)))
    for stage in (*STAGES, "post-processing", "total"):
        times = [columns[name][stage] for name in names]
        cells = " | ".join(f"{t:.2f}" for t in times)
        speedup = f" {times[0] / times[1]:.1f}× |" if ratio and times[1] > 0 else ""
        print(f"| {stage} | {cells} |{speedup}")
    if args.skip_official:
        return 0
    problem = check_agreement(ref_records, our_records)
    print(f"\noutputs: {problem or 'the same masks (IoU >= 0.99, scores within 1e-4)'}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
