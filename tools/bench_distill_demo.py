"""Encoder time per image of a distillation's teacher and student, side by side in one
process (``+exp=distill_demo``: vit_nano teacher, vit_pico student, at 64 px):

    .venv/bin/python tools/bench_distill_demo.py TEACHER.pth STUDENT.pth \
        [--teacher-type vit_nano] [--student-type vit_pico] [--image-size 64]

``STUDENT.pth`` is the export of the distillation run. Prints the encoder parameters and the
best of ``--repeats`` forward passes of a batch of ``--batch`` random images, per image.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from sam_lightning.modeling.build import build_sam


def encoder_seconds(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Best seconds per image of ``repeats`` encoder passes over ``images`` (after one warm-up)."""
    with torch.no_grad():
        model.image_encoder(images)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.image_encoder(images)
            times.append(time.perf_counter() - start)
    return min(times) / len(images)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher")
    parser.add_argument("student")
    parser.add_argument("--teacher-type", default="vit_nano")
    parser.add_argument("--student-type", default="vit_pico")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    print(f"threads={torch.get_num_threads()} batch={args.batch} best of {args.repeats}")
    print("| role | model | encoder params | ms / image |\n|---|---|---:|---:|")
    seconds = {}
    for role, model_type, path in (
        ("teacher", args.teacher_type, args.teacher),
        ("student", args.student_type, args.student),
    ):
        model = build_sam(model_type, checkpoint=path, image_size=args.image_size).eval()
        params = sum(p.numel() for p in model.image_encoder.parameters())
        seconds[role] = encoder_seconds(model, images, args.repeats)
        print(f"| {role} | {model_type} | {params / 1e6:.2f}M | {seconds[role] * 1e3:.3f} |")
    print(f"student speed-up: {seconds['teacher'] / seconds['student']:.2f}×")


if __name__ == "__main__":
    main()
