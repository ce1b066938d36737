"""Training throughput and peak memory of the simulated interactive training loop.

    python tools/bench_train.py [--models vit_tiny vit_b] [--sizes 1024 512] [--steps 3]
        [--modes full frozen lora cached] [--precisions fp32 bf16] [--checkpointing]
        [--threads 2]

For each model, input size, mode and precision (fp32 / bf16 autocast) a fresh subprocess
builds ``SamTrainingModule``, draws batches from the synthetic ``SamDataModule`` and times
full training steps (encoder once per image, the 11-round session, backward, AdamW step)
after one warm-up step. The modes are what a fine-tuning run trains: ``full`` everything,
``frozen`` the prompt encoder and mask decoder on a frozen encoder (no autograd through it),
``lora`` rank-4 LoRA adapters on the encoder's attention (``model.lora``, the base frozen)
plus the decoder, ``cached`` the decoder from cached embeddings
(``training.embedding_cache``, filled by an earlier subprocess: the timed steps only read
it). It prints steps/s, images/s, masks/s, the size of the run's checkpoint (weights it
holds + AdamW state; every run starts from a saved random base checkpoint, so a frozen base
stays out of it) and the peak memory: on CPU the growth of the process's peak resident
set (``ru_maxrss``) from before the first step, i.e. activations, gradients and optimiser
state; on CUDA ``torch.cuda.max_memory_allocated`` (everything allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

#: Mode -> SamTrainingModule arguments.
MODES = {
    "full": {},
    "frozen": {"frozen": ["image_encoder"]},
    "lora": {"lora": {"rank": 4}},
    "cached": {"frozen": ["image_encoder"]},
}


def measure(args: argparse.Namespace) -> dict:
    """One setting in this process (``--child``)."""
    import torch

    from sam_lightning.data.datamodule import SamDataModule
    from sam_lightning.modeling.build import build_sam
    from sam_lightning.modeling.checkpoint import save_checkpoint
    from sam_lightning.training.interactive import simulate_interactive
    from sam_lightning.training.module import SamTrainingModule

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    extra = dict(MODES[args.mode])
    if args.mode == "cached":
        extra["embedding_cache"] = args.cache_dir
    with tempfile.TemporaryDirectory() as folder:
        # Fine-tuning starts from a checkpoint (random weights here, the same in every
        # process): a run with a frozen base then leaves it out of its checkpoints.
        base = save_checkpoint(
            build_sam(args.model, image_size=args.image_size), os.path.join(folder, "base.pth")
        )
        module = SamTrainingModule(
            model_type=args.model,
            checkpoint=str(base),
            image_size=args.image_size,
            activation_checkpointing=args.checkpointing,
            **extra,
        ).to(device)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    data = SamDataModule(
        train={"kind": "synthetic", "num_images": 64, "image_size": args.image_size},
        image_size=args.image_size,
        max_masks=args.max_masks,
        batch_size=args.batch_size,
    )
    batches = list(data.train_loader(num_batches=args.steps + 1))
    generator = torch.Generator(device=device).manual_seed(0)
    if args.fill_only:  # the cached mode's cache, written before the measuring process
        with torch.no_grad():
            for batch in batches:
                module._embeddings(
                    {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
                )
        return {"filled": module.embedding_cache.misses}

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

    first, timed = batches[0], batches[1:]
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step(first)  # warm-up; it also reaches the steady-state high-water mark
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    images = masks = 0
    start = time.perf_counter()
    for batch in timed:
        masks += step(batch)
        images += args.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before_mb
    if args.mode == "cached" and module.embedding_cache.misses:
        raise RuntimeError(f"{module.embedding_cache.misses} cache misses in the timed steps")
    # What a Lightning checkpoint of this run holds: the weights (only what trains when the
    # base is frozen, see SamTrainingModule.on_save_checkpoint) and the AdamW state.
    checkpoint = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    module.on_save_checkpoint(checkpoint)
    with tempfile.NamedTemporaryFile(suffix=".ckpt") as file:
        torch.save(checkpoint, file)
        checkpoint_mb = os.path.getsize(file.name) / 2**20
    return {
        "checkpoint_mb": checkpoint_mb,
        "steps_per_s": len(timed) / elapsed,
        "images_per_s": images / elapsed,
        "masks_per_s": masks / elapsed,
        "peak_mb": peak_mb,
    }


def run_child(
    args: argparse.Namespace,
    model: str,
    size: int,
    mode: str,
    precision: str,
    cache_dir: str,
    fill_only: bool = False,
) -> dict:
    """One setting in a fresh process."""
    batch, masks = SHAPES[model]
    command = [
        sys.executable, __file__, "--child", "--model", model, "--precision", precision,
        "--image-size", str(size), "--batch-size", str(batch), "--max-masks", str(masks),
        "--steps", str(args.steps), "--threads", str(args.threads), "--mode", mode,
        "--device", args.device, "--rounds", str(args.rounds), "--cache-dir", cache_dir,
    ]  # fmt: skip
    if args.checkpointing:
        command.append("--checkpointing")
    if fill_only:
        command.append("--fill-only")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        print(result.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{model} {size} {mode} {precision} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


#: Per model: (images per step, masks per image).
SHAPES = {"vit_tiny": (4, 16), "vit_b": (1, 16), "vit_h": (1, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "vit_b"])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=None,
        help="input sizes (default: 256 for vit_tiny, 1024 and 512 otherwise)",
    )
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    parser.add_argument(
        "--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"]
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing of the encoder blocks",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=8, help="corrective point rounds (paper 8)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fill-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-masks", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()  # fmt: skip
    if args.child:
        print(json.dumps(measure(args)))
        return
    rounds = f"1+{args.rounds}+2"
    print(
        f"device={args.device} threads={args.threads} steps={args.steps} rounds={rounds} "
        f"activation checkpointing={'on' if args.checkpointing else 'off'}"
    )
    header = f"{'model':9} {'size':>5} {'batch':>6} {'mode':7} {'precision':9}"
    print(f"{header} {'steps/s':>8} {'images/s':>9} {'masks/s':>8} {'peak MB':>8} {'ckpt MB':>8}")
    for model in args.models:
        sizes = args.sizes or ([256] if model == "vit_tiny" else [1024, 512])
        for size in sizes:
            for mode in args.modes:
                for precision in args.precisions:
                    with tempfile.TemporaryDirectory(prefix="bench_cache_") as cache_dir:
                        if mode == "cached":
                            run_child(args, model, size, mode, precision, cache_dir, True)
                        row = run_child(args, model, size, mode, precision, cache_dir)
                    batch, masks = SHAPES[model]
                    print(
                        f"{model:9} {size:>5} {f'{batch}x{masks}':>6} {mode:7} {precision:9} "
                        f"{row['steps_per_s']:>8.3f} {row['images_per_s']:>9.3f} "
                        f"{row['masks_per_s']:>8.2f} {row['peak_mb']:>8.0f} "
                        f"{row['checkpoint_mb']:>8.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
