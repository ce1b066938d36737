"""Training throughput and peak memory of the simulated interactive training loop.

    python tools/bench_train.py [--models vit_tiny vit_b] [--steps 3] [--threads 2]

For each model and setting (fp32 / bf16 autocast, with and without activation checkpointing)
a fresh subprocess builds ``SamTrainingModule``, draws batches from the synthetic
``SamDataModule`` and times full training steps (encoder once per image, the 11-round
session, backward, AdamW step) after one warm-up step. It prints images/s, masks/s and the
peak memory: on CPU the growth of the process's peak resident set (``ru_maxrss``) from
before the first step, i.e. activations, gradients and optimiser state; on CUDA
``torch.cuda.max_memory_allocated`` (everything allocated).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SETTINGS = [
    ("fp32", False),
    ("fp32", True),
    ("bf16", False),
    ("bf16", True),
]


def measure(args: argparse.Namespace) -> dict:
    """One setting in this process (``--child``)."""
    import torch

    from sam_lightning.data.datamodule import SamDataModule
    from sam_lightning.training.interactive import simulate_interactive
    from sam_lightning.training.module import SamTrainingModule

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module = SamTrainingModule(
        model_type=args.model,
        image_size=args.image_size,
        activation_checkpointing=args.checkpointing,
    ).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    data = SamDataModule(
        train={"kind": "synthetic", "num_images": 64, "image_size": args.image_size},
        image_size=args.image_size,
        max_masks=args.max_masks,
        batch_size=args.batch_size,
    )
    batches = iter(data.train_loader(num_batches=args.steps + 1))
    generator = torch.Generator(device=device).manual_seed(0)

    def step(batch: dict) -> int:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16"):
            embeddings = module._embeddings(batch)
            out = simulate_interactive(
                module.model,
                embeddings,
                batch["masks"],
                batch["image_index"],
                generator=generator,
                num_point_rounds=args.rounds,
            )
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return len(batch["masks"])

    first = next(batches)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step(first)  # warm-up; it also reaches the steady-state high-water mark
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    images = masks = 0
    start = time.perf_counter()
    for _ in range(args.steps):
        masks += step(next(batches))
        images += args.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before_mb
    return {"images_per_s": images / elapsed, "masks_per_s": masks / elapsed, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "vit_b"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=8, help="corrective point rounds (paper 8)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-masks", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    # Per model: (image size, images per step, masks per image).
    shapes = {"vit_tiny": (256, 4, 16), "vit_b": (1024, 1, 16), "vit_h": (1024, 1, 64)}
    rounds = f"1+{args.rounds}+2"
    print(f"device={args.device} threads={args.threads} steps={args.steps} rounds={rounds}")
    header = f"{'model':9} {'size':>5} {'batch':>9} {'precision':9} {'act. ckpt':9}"
    print(f"{header} {'images/s':>9} {'masks/s':>8} {'peak MB':>8}")
    for model in args.models:
        size, batch, masks = shapes[model]
        for precision, checkpointing in SETTINGS:
            command = [
                sys.executable, __file__, "--child", "--model", model, "--precision", precision,
                "--image-size", str(size), "--batch-size", str(batch), "--max-masks", str(masks),
                "--steps", str(args.steps), "--threads", str(args.threads),
                "--device", args.device, "--rounds", str(args.rounds),
            ]  # fmt: skip
            if checkpointing:
                command.append("--checkpointing")
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode:
                print(result.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{model} {precision} failed")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{model:9} {size:>5} {f'{batch}x{masks}':>9} {precision:9} "
                f"{'on' if checkpointing else 'off':9} {row['images_per_s']:>9.3f} "
                f"{row['masks_per_s']:>8.2f} {row['peak_mb']:>8.0f}"
            )


if __name__ == "__main__":
    main()
