"""Times our image encoders against the reference ones, in one process, on the same weights.

    .venv/bin/python tools/bench_encoders.py [--models vit_t vit_b vit_h] [--repeats 3]
        [--repeats-vit-h N] [--threads N]

Measures the image-encoder forward alone (``model.image_encoder(x)``: no preprocessing, no
prompt encoder or decoder) for one 1024×1024 input, batch 1, fp32, under ``torch.no_grad``
in eval mode. The references are MobileSAM's ``mobile_sam`` package for ``vit_t`` (TinyViT)
and the official ``segment_anything`` package for ``vit_b`` and ``vit_h``.

Weights: the reference model is built with its own random initialisation (seed 0); for
``vit_t`` every weight and buffer is then randomised (``randomize_``: the init leaves zero
biases and BatchNorm statistics that would hide bugs) and ``eval()`` is called again, since
MobileSAM's attention caches its bias table at ``eval()``. Its state dict is saved with
``torch.save`` to a temporary file, which our ``build_sam(model_type, checkpoint=...)``
loads strictly, as it would a released checkpoint.

Input: skimage's ``coffee()`` photo (400x600) resized to 683x1024 (longest side 1024) and
preprocessed once by the reference model (normalised with its pixel mean/std, zero-padded to
1024x1024); both encoders get that identical tensor. The embeddings are checked to agree
(max abs difference printed; SystemExit if above 1e-3) before timing; that first forward of
each is also the warm-up. The timed runs alternate (ours, reference, ours, ...) so that load
from other processes falls on both alike. Prints a markdown table: best and median seconds
per image of each, the ratio reference / ours (of the best times), and each encoder's
parameters in millions (``vit_t``'s count includes TinyViT's classification head, which the
checkpoint holds but SAM never runs).

The reference packages import torchvision and timm, replaced by the test stand-ins:
``tests/`` is put on ``sys.path`` to import the helpers from there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarking import bench_image, best_time  # noqa: E402  (tools/, first on sys.path)
from mobile_sam_reference import import_mobile_sam, randomize_  # noqa: E402
from official_sam import import_official  # noqa: E402

from sam_lightning.modeling.build import build_sam  # noqa: E402

MODELS = ("vit_t", "vit_b", "vit_h")
REFERENCE_NAMES = {"vit_t": "MobileSAM", "vit_b": "official", "vit_h": "official"}
#: Largest allowed max abs difference between the two embeddings.
TOLERANCE = 1e-3


def reference_model(model_type: str) -> nn.Module:
    """The reference SAM of ``model_type`` with random weights, in eval mode."""
    torch.manual_seed(0)
    if model_type == "vit_t":
        model = randomize_(import_mobile_sam().sam_model_registry["vit_t"](), seed=0)
        return model.eval()  # again: MobileSAM's attention caches its bias table here
    return import_official().sam_model_registry[model_type]().eval()


def bench_input(reference: nn.Module) -> torch.Tensor:
    """The coffee photo, longest side 1024, preprocessed by the reference: ``1×3×1024×1024``."""
    image = torch.as_tensor(bench_image(683, 1024)).permute(2, 0, 1).contiguous()
    return reference.preprocess(image)[None]


def millions(module: nn.Module) -> float:
    return sum(parameter.numel() for parameter in module.parameters()) / 1e6


@torch.no_grad()
def measure(model_type: str, repeats: int) -> dict:
    """Best and median seconds of both encoders, interleaved, after the parity check."""
    reference = reference_model(model_type)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{model_type}.pth"
        torch.save(reference.state_dict(), path)
        ours = build_sam(model_type, checkpoint=path)
    x = bench_input(reference)
    encoders = {"ours": ours.image_encoder, "reference": reference.image_encoder}

    difference = (encoders["ours"](x) - encoders["reference"](x)).abs().max().item()
    print(f"{model_type}: max abs difference of the embeddings {difference:.3g}", flush=True)
    if not difference <= TOLERANCE:
        raise SystemExit(f"{model_type}: ours and the reference disagree ({difference:.3g})")

    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, encoder in encoders.items():
            times[name].append(best_time(lambda encoder=encoder: encoder(x), 1))
    runs = {name: [round(value, 3) for value in values] for name, values in times.items()}
    print(f"{model_type}: seconds of each run {runs}", flush=True)
    return {
        "model": model_type,
        "reference": REFERENCE_NAMES[model_type],
        "difference": difference,
        "repeats": repeats,
        **{f"{name}_best": min(values) for name, values in times.items()},
        **{f"{name}_median": statistics.median(values) for name, values in times.items()},
        "ours_params": millions(encoders["ours"]),
        "reference_params": millions(encoders["reference"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Our vs reference image-encoder timings.")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each encoder")
    parser.add_argument(
        "--repeats-vit-h", type=int, default=None, help="timed runs for vit_h (--repeats)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, one 1024x1024 image, "
        "batch 1, fp32, no_grad, eval\n",
        flush=True,
    )
    rows = []
    for model_type in args.models:
        repeats = args.repeats
        if model_type == "vit_h" and args.repeats_vit_h is not None:
            repeats = args.repeats_vit_h
        rows.append(measure(model_type, repeats))

    print(
        f"\n{torch.get_num_threads()} threads; seconds per image, best and median of the "
        "interleaved runs\n"
    )
    print(
        "| model | reference | runs | reference best (s) | reference median (s) "
        "| ours best (s) | ours median (s) | reference / ours | params ours / ref (M) "
        "| max abs diff |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['model']} | {row['reference']} | {row['repeats']} "
            f"| {row['reference_best']:.3g} | {row['reference_median']:.3g} "
            f"| {row['ours_best']:.3g} | {row['ours_median']:.3g} "
            f"| {row['reference_best'] / row['ours_best']:.2f} "
            f"| {row['ours_params']:.2f} / {row['reference_params']:.2f} "
            f"| {row['difference']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
