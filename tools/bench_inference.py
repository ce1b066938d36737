"""Images per second of ``python -m sam_lightning.amg`` or of an evaluation harness
(``python -m sam_lightning.evaluate``) on one process and on several, side by side on the same
images and weights, and whether the outputs agree.

    .venv/bin/python tools/bench_inference.py [--task amg|points|proposals] [--images 8]
        [--model-type vit_b] [--image-size 1024] [--points-per-side 16] [--threads 2]

Runs the real command line (a subprocess per setting) on ``--images`` photos (skimage's
``coffee()`` at a few sizes and crops) with random weights (seed 0) and thresholds of 0, so
that every mask goes through the whole post-processing. The settings:

- the baseline: 1 process with ``--threads`` threads, images read in the main process
  (``num_workers=0``, what ``amg`` did before it could use several devices);
- 1 process, ``num_workers=2`` reader processes;
- ``--threads`` processes (``devices=N accelerator=cpu``) with 1 thread each, with
  ``num_workers`` 0 and 2.

``amg`` runs at ``images_per_batch=1``. ``points`` (App. D.1, clicks 1 to 3) and ``proposals``
(App. D.3, ``--points-per-side`` grid) run on a COCO file the script writes: 4 rectangular
objects per image. images/s is counted over the image loop (``_summary.json``'s ``seconds``
for amg, ``_progress/manifest.json``'s for evaluate, the wait for the other ranks included:
model built, processes started); "wall" is the whole command, start-up included. The ratio is
against the baseline. "same" says whether the outputs (amg's JSON files, evaluate's
metrics.json and predictions.json) are byte-identical to the baseline's: CPU matrix products
can differ with the thread count, so 1-thread and 2-thread processes may disagree in the last
bits of a logit (the test suite compares equal thread counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarking import bench_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZES = [(480, 640), (640, 480), (512, 768), (600, 600)]


def write_images(directory: Path, count: int) -> None:
    for index in range(count):
        height, width = SIZES[index % len(SIZES)]
        image = bench_image(height + 8 * index, width)
        Image.fromarray(image).save(directory / f"img{index:03d}.png")


def write_ground_truth(photos: Path, count: int) -> Path:
    """A COCO instances file for the images of :func:`write_images`: 4 rectangles each."""
    import numpy as np

    from sam_lightning.ops import rle_encode

    images, annotations = [], []
    for index in range(count):
        height, width = SIZES[index % len(SIZES)]
        height += 8 * index
        images.append(
            {"id": index + 1, "file_name": f"img{index:03d}.png", "height": height, "width": width}
        )
        masks = np.zeros((4, height, width), dtype=bool)
        for k in range(4):
            top, left = (k // 2) * height // 2, (k % 2) * width // 2
            masks[k, top + 10 : top + height // 3, left + 10 : left + width // 3] = True
        for mask, rle in zip(masks, rle_encode(masks)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": 1,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
    path = photos / "instances.json"
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
    path.write_text(json.dumps(document))
    return path


def command_line(photos: Path, output: Path, args) -> list[str]:
    model = [f"model.type={args.model_type}", f"model.image_size={args.image_size}"]
    if args.task == "amg":
        return [
            "sam_lightning.amg",
            f"input={photos}",
            f"output={output}",
            *model,
            f"amg.points_per_side={args.points_per_side}",
            "amg.pred_iou_thresh=0",
            "amg.stability_score_thresh=0",
            "amg.box_nms_thresh=1.0",
            "images_per_batch=1",
        ]
    data = [f"data.images={photos}", f"data.annotations={photos / 'instances.json'}"]
    task = {
        "points": ["+eval=points_coco", "eval.num_clicks=[1,2,3]"],
        "proposals": [
            "+eval=proposals_lvis",
            "data.format=coco",
            f"eval.points_per_side={args.points_per_side}",
        ],
    }[args.task]
    return [
        "sam_lightning.evaluate",
        *task,
        *model,
        *data,
        "logger.kind=none",
        f"hydra.run.dir={output}",
    ]


def run(photos: Path, output: Path, threads: int, overrides: list[str], args) -> dict:
    command = [
        sys.executable,
        "-m",
        *command_line(photos, output, args),
        "accelerator=cpu",
        "progress=false",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(overrides)} failed:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    if args.task == "amg":
        summary = json.loads((output / "_summary.json").read_text())
        return {"seconds": summary["seconds"], "wall": wall, "images": summary["written"]}
    manifest = json.loads((output / "_progress" / "manifest.json").read_text())
    return {"seconds": manifest["seconds"], "wall": wall, "images": manifest["computed"]}


def files(output: Path) -> dict[str, bytes]:
    names = ["metrics.json", "predictions.json"]
    found = [*output.glob("img*.json"), *(output / name for name in names)]
    return {p.name: p.read_bytes() for p in found if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["amg", "points", "proposals"], default="amg")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="cores to use in all")
    args = parser.parse_args()
    settings = [
        (f"1 process x {args.threads} threads, num_workers=0", args.threads, ["num_workers=0"]),
        (f"1 process x {args.threads} threads, num_workers=2", args.threads, ["num_workers=2"]),
        (
            f"{args.threads} processes x 1 thread, num_workers=0",
            1,
            [f"devices={args.threads}", "num_workers=0"],
        ),
        (
            f"{args.threads} processes x 1 thread, num_workers=2",
            1,
            [f"devices={args.threads}", "num_workers=2"],
        ),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        photos = Path(scratch, "photos")
        photos.mkdir()
        write_images(photos, args.images)
        write_ground_truth(photos, args.images)
        grid = f"{args.points_per_side}x{args.points_per_side} points, "
        print(
            f"{args.task}: {args.images} images, {args.model_type} at {args.image_size}, "
            f"{'' if args.task == 'points' else grid}random weights"
        )
        print(f"{'setting':<42} {'images/s':>9} {'ratio':>6} {'wall s':>7} {'same':>5}")
        baseline = reference = None
        for index, (name, threads, overrides) in enumerate(settings):
            output = Path(scratch, f"out{index}")
            timing = run(photos, output, threads, overrides, args)
            rate = timing["images"] / timing["seconds"]
            baseline = baseline or rate
            reference = reference or files(output)
            same = "yes" if files(output) == reference else "no"
            print(
                f"{name:<42} {rate:>9.3f} {rate / baseline:>6.2f} {timing['wall']:>7.1f} {same:>5}"
            )


if __name__ == "__main__":
    main()
