"""Times the official SamPredictor and ours side by side, in one process, on the same weights.

    .venv/bin/python tools/bench_predictor.py [--model-type vit_b] [--repeats 3] [--boxes 64]

Both predictors get the same random ``vit_b`` weights (official initialisation, seed 0, loaded
strictly into our model) and the same image: skimage's ``coffee()`` photo (400x600) resized
to 1024x1536, a typical camera-photo size. Outputs are checked to agree before timing.
Prints a markdown table: ``set_image`` (s), ``predict`` with one point (ms), ``predict_torch``
with a batch of boxes (s); best of ``--repeats`` runs each.

The official package imports torchvision, replaced by the test stand-in: ``tests/`` is put on
``sys.path`` to import ``official_sam`` from there (run from the repository root or anywhere).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarking import bench_image, best_time  # noqa: E402  (tools/, first on sys.path)
from official_sam import import_official  # noqa: E402

from sam_lightning.inference import SamPredictor  # noqa: E402
from sam_lightning.modeling.build import build_sam  # noqa: E402


def random_boxes(count: int, height: int, width: int) -> np.ndarray:
    """``count`` seeded XYXY boxes inside the image, at least 10% of each side."""
    rng = np.random.default_rng(0)
    x0y0 = rng.uniform(0, 0.7, (count, 2)) * [width, height]
    size = rng.uniform(0.1, 0.3, (count, 2)) * [width, height]
    return np.concatenate([x0y0, x0y0 + size], axis=1)


def check_agreement(reference, ours, point: dict, boxes: torch.Tensor) -> None:
    """Raises AssertionError if the two predictors disagree beyond float32 noise."""
    torch.testing.assert_close(ours.features, reference.features, atol=1e-3, rtol=1e-3)
    expected, actual = reference.predict(**point), ours.predict(**point)
    np.testing.assert_allclose(actual[1], expected[1], atol=1e-3)
    assert (actual[0] != expected[0]).mean() < 1e-4, "predict masks differ"
    expected_t = reference.predict_torch(None, None, boxes, multimask_output=True)
    actual_t = ours.predict_torch(None, None, boxes, multimask_output=True)
    torch.testing.assert_close(actual_t[1], expected_t[1], atol=1e-3, rtol=1e-3)
    assert (actual_t[0] != expected_t[0]).float().mean() < 1e-4, "predict_torch masks differ"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Official vs our SamPredictor timings.")
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--boxes", type=int, default=64, help="boxes for predict_torch")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1536), metavar=("H", "W"))
    args = parser.parse_args(argv)

    official = import_official()
    torch.manual_seed(0)
    reference_model = official.sam_model_registry[args.model_type]().eval()
    our_model = build_sam(args.model_type)
    our_model.load_state_dict(reference_model.state_dict(), strict=True)
    reference, ours = official.SamPredictor(reference_model), SamPredictor(our_model)

    height, width = args.size
    image = bench_image(height, width)
    point = {
        "point_coords": np.array([[0.45 * width, 0.55 * height]]),
        "point_labels": np.array([1]),
    }
    boxes = torch.as_tensor(
        ours.transform.apply_boxes(random_boxes(args.boxes, height, width), (height, width)),
        dtype=torch.float,
    )
    reference.set_image(image)
    ours.set_image(image)
    check_agreement(reference, ours, point, boxes)

    rows = []
    for name, unit, scale, run in [
        ("set_image", "s", 1.0, lambda p: p.set_image(image)),
        ("predict, 1 point", "ms", 1e3, lambda p: p.predict(**point)),
        (f"predict_torch, {args.boxes} boxes", "s", 1.0,
         lambda p: p.predict_torch(None, None, boxes, multimask_output=True)),
    ]:
        times = [
            best_time(lambda p=p, r=run: r(p), args.repeats) * scale for p in (reference, ours)
        ]
        rows.append((f"`{name}` ({unit})", *times, times[1] / times[0]))

    print(f"{args.model_type}, image {height}x{width}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, best of {args.repeats}\n")
    print("| operation | official | ours | ours / official |\n|---|---:|---:|---:|")
    for label, reference_time, our_time, ratio in rows:
        print(f"| {label} | {reference_time:.3g} | {our_time:.3g} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
