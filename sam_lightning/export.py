"""Exports a training checkpoint to the official SAM weights layout.

``python -m sam_lightning.export <checkpoint.ckpt> <out.pth|out.safetensors> [--model-type T]
[--base BASE.pth] [--adapter-only]``

A Lightning checkpoint of :class:`~sam_lightning.training.module.SamTrainingModule` holds the
model's weights under ``state_dict`` with the prefix ``model.``, next to optimiser states and
``hyper_parameters``. The export is the plain, flat state dict of the official files (such
as ``sam_vit_b_01ec64.pth``): loadable by the official ``segment_anything`` builders, by
:func:`~sam_lightning.modeling.build.build_sam` and by ``SamPredictor`` users. A model
trained with text prompts (``training.text``) keeps its text projection
(``prompt_encoder.text_projection.*``, for ``build_sam(..., text_embed_dim=D)``), which the
official builders refuse as unexpected keys; ``--drop-text`` leaves it out.

A distillation checkpoint (``distill.*``) holds the student encoder: the export adds the
teacher's prompt encoder and mask decoder (from the recorded teacher checkpoint, or
``--base``) and writes a whole model of the student's type.

A checkpoint of a LoRA run (``model.lora.rank``), or of a run that froze parts of its
``model.checkpoint``, holds only what trained: the adapters and the parts trained in full.
The export puts them on (merges the adapters into) its base checkpoint (found through the
path recorded in the checkpoint, or ``--base``; a base whose SHA-256 differs from the
recorded one is refused) and writes the whole model; ``--adapter-only`` writes just
the adapter (and the fully trained parts) as safetensors with its settings as metadata, for
``model.lora.weights`` / ``segment --lora-weights``.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sam_lightning.file_io import sha256_file
from sam_lightning.modeling.adapters import (
    AdapterInfo,
    merge_adapter,
    peft_to_adapter,
    save_adapter,
)
from sam_lightning.modeling.build import TEXT_PROJECTION, build_sam, sam_model_registry
from sam_lightning.modeling.checkpoint import (
    DISTILLED_KEY,
    TRAINED_ONLY_KEY,
    CheckpointError,
    load_state_dict_file,
    save_checkpoint,
)

DEFAULT_IMAGE_SIZE = 1024
#: Keys named per kind of mismatch in error messages (a wrong model type mismatches all).
MAX_KEYS_SHOWN = 20


def export_checkpoint(
    ckpt_path: str | PathLike[str],
    out_path: str | PathLike[str],
    *,
    model_type: str | None = None,
    image_size: int | None = None,
    prefix: str | None = None,
    drop_text: bool = False,
    base: str | PathLike[str] | None = None,
    adapter_only: bool = False,
) -> Path:
    """Writes the SAM weights of a training checkpoint as an official state-dict file.

    Args:
        ckpt_path: training checkpoint (a ``torch.save`` dict with a ``"state_dict"`` entry),
            read with ``torch.load(weights_only=True)``.
        out_path: destination; ``.safetensors`` for safetensors, otherwise the official
            ``torch.save`` format. Written atomically.
        model_type: registry name to check the keys against (default: the checkpoint's
            ``hyper_parameters["model_type"]``).
        image_size: encoder input side (default: ``hyper_parameters["image_size"]``, else
            1024).
        prefix: key prefix of the SAM weights in ``state_dict`` (default: detected, e.g.
            ``"model."``).
        drop_text: leave out the text projection of a model trained with text prompts, so
            that the official builders load the file (they have no text prompt).
        base: the base checkpoint of a LoRA run (default: the path it records); its
            SHA-256 must be the recorded one.
        adapter_only: write only the adapter of a LoRA run (``.safetensors``).

    Returns:
        The path written.

    Raises:
        FileNotFoundError: no such checkpoint.
        UnsafeCheckpointError: the checkpoint pickles callables or class instances.
        CheckpointError: the checkpoint is empty, truncated, corrupt or not a checkpoint.
        ValueError: not a training checkpoint, no model type known, or keys or shapes that
            differ from the model's (named in the message).
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if out_path.resolve() == ckpt_path.resolve():
        raise ValueError(f"refusing to overwrite the training checkpoint {ckpt_path}")
    weights, hparams = read_training_checkpoint(ckpt_path, prefix=prefix)

    model_type = model_type or hparams.get("model_type")
    if model_type is None:
        raise ValueError(
            f"{ckpt_path} records no model type (hyper_parameters['model_type']); pass "
            f"model_type= (--model-type), one of {sorted(sam_model_registry)}"
        )
    image_size = int(image_size or hparams.get("image_size") or DEFAULT_IMAGE_SIZE)
    lora = hparams.get("lora")
    if adapter_only and not lora:
        raise ValueError(f"{ckpt_path} is not from a LoRA run: it has no adapter to export")
    if lora:
        adapter, info = _adapter_of(weights, hparams, model_type, image_size)
        if adapter_only:
            return save_adapter(adapter, info, out_path)
        base_weights = _base_weights(ckpt_path, hparams, base, model_type, image_size)
        weights = merge_adapter(base_weights, adapter, info.spec.scaling)
    elif hparams.get(DISTILLED_KEY):  # the student's encoder with the teacher's other parts
        teacher = _base_weights(
            ckpt_path, hparams, base, hparams["teacher_type"], image_size, "teacher_checkpoint"
        )
        rest = {k: v for k, v in teacher.items() if not k.startswith("image_encoder.")}
        weights = {**rest, **weights}
    elif hparams.get(TRAINED_ONLY_KEY):  # the trained parts over the frozen base
        base_weights = _base_weights(ckpt_path, hparams, base, model_type, image_size)
        weights = merge_adapter(base_weights, weights, scaling=1.0)
    projection = weights.get(f"{TEXT_PROJECTION}weight")
    text_embed_dim = None if projection is None or drop_text else projection.shape[1]
    if drop_text:
        weights = {k: v for k, v in weights.items() if not k.startswith(TEXT_PROJECTION)}
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = build_sam(
            model_type, image_size=image_size, text_embed_dim=text_embed_dim
        ).state_dict()
    problems = _key_mismatches(expected, weights)
    if problems:
        raise ValueError(
            f"{ckpt_path}: the weights do not match model {model_type!r} at "
            f"image_size={image_size} (wrong --model-type or --image-size?):\n  "
            + "\n  ".join(problems)
        )
    return save_checkpoint({key: weights[key] for key in expected}, out_path)


def read_training_checkpoint(
    path: str | PathLike[str], prefix: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The SAM weights (prefix removed) and the ``hyper_parameters`` (``{}`` if absent) of
    a training checkpoint, read safely onto the CPU.

    Raises:
        FileNotFoundError, CheckpointError, ValueError: see :func:`export_checkpoint`.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        raise ValueError(
            f"{path} is not a training checkpoint: safetensors files hold plain weights"
        )
    # The project's loader: weights-only unpickling, clear errors, prefix detection.
    weights = load_state_dict_file(path, prefix=prefix, trained_only=True)
    # Known safe and readable now; memory-mapped (zip format), so tensors are not read again.
    checkpoint = torch.load(
        path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
    )
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        keys = list(checkpoint)
        shown = ", ".join(map(repr, keys[:5]))
        if len(keys) > 5:
            shown += f", ... ({len(keys)} in all)"
        raise ValueError(
            f"{path} is not a training checkpoint: no 'state_dict' entry (top-level keys: "
            f"{shown}); a plain state dict is already in the official layout"
        )
    hparams = checkpoint.get("hyper_parameters")
    return weights, dict(hparams) if isinstance(hparams, Mapping) else {}


def _adapter_of(
    weights: Mapping[str, Tensor], hparams: Mapping[str, Any], model_type: str, image_size: int
) -> tuple[dict[str, Tensor], AdapterInfo]:
    """The adapter tensors of a LoRA run's weights (all of them trained) and its metadata."""
    lora = hparams["lora"]
    adapter = peft_to_adapter(weights, list(weights))
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in adapter if ".lora_" in key})
    info = AdapterInfo(
        rank=int(lora["rank"]),
        alpha=lora.get("alpha"),
        targets=tuple(lora["targets"]),
        qkv=str(lora["qkv"]),
        model_type=model_type,
        image_size=image_size,
        base_sha256=hparams.get("base_sha256"),
        base_path=hparams.get("checkpoint"),
        modules=tuple(modules),
        trained=tuple(sorted(key for key in adapter if ".lora_" not in key)),
    )
    return adapter, info


def _base_weights(
    ckpt_path: Path,
    hparams: Mapping[str, Any],
    base: str | PathLike[str] | None,
    model_type: str,
    image_size: int,
    path_key: str = "checkpoint",
) -> dict[str, Tensor]:
    """The state dict of the base (a model of ``model_type``, its path recorded under
    ``hyper_parameters[path_key]``) of a run whose checkpoints hold only what it trained, at
    ``image_size`` (interpolated from the base's own size if they differ), after checking
    the base's SHA-256."""
    recorded_path, recorded_sha256 = hparams.get(path_key), hparams.get("base_sha256")
    base = base if base is not None else recorded_path
    if base is None:
        raise ValueError(
            f"{ckpt_path} adapts random base weights (the run had no model.checkpoint): there "
            "is no base to merge into; export the adapter with --adapter-only"
        )
    if not Path(base).is_file():
        raise FileNotFoundError(
            f"the base checkpoint of {ckpt_path} is not at {base}: pass it with --base FILE"
        )
    digest = sha256_file(base)
    if recorded_sha256 is not None and digest != recorded_sha256:
        raise ValueError(
            f"{base} is not the base {ckpt_path} was trained on: its sha256 is "
            f"{digest[:12]}…, the run's base ({recorded_path}) had {recorded_sha256[:12]}…"
        )
    return build_sam(model_type, checkpoint=base, image_size=image_size).state_dict()


def _key_mismatches(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> list[str]:
    """Missing, unexpected and misshapen keys of ``found``, one line per kind (none: [])."""
    kinds = {
        "missing keys": [key for key in expected if key not in found],
        "unexpected keys": [key for key in found if key not in expected],
        "wrong shapes": [
            f"{key} (checkpoint {tuple(found[key].shape)}, model {tuple(expected[key].shape)})"
            for key in found
            if key in expected and found[key].shape != expected[key].shape
        ],
    }
    lines = []
    for kind, keys in kinds.items():
        if keys:
            shown = ", ".join(keys[:MAX_KEYS_SHOWN])
            if len(keys) > MAX_KEYS_SHOWN:
                shown += f", ... ({len(keys) - MAX_KEYS_SHOWN} more)"
            lines.append(f"{kind} ({len(keys)}): {shown}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m sam_lightning.export CKPT OUT [--model-type T]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sam_lightning.export",
        description="Export a training checkpoint to the official SAM state-dict layout.",
    )
    parser.add_argument("checkpoint", type=Path, help="training (Lightning) checkpoint")
    parser.add_argument("output", type=Path, help="out.pth (official format) or out.safetensors")
    parser.add_argument(
        "--model-type",
        choices=sorted(sam_model_registry),
        help="model to check the keys against (default: from the checkpoint)",
    )
    parser.add_argument(
        "--image-size", type=int, help="encoder input side (default: from the checkpoint)"
    )
    parser.add_argument(
        "--prefix", help="key prefix of the SAM weights in state_dict (default: detected)"
    )
    parser.add_argument(
        "--drop-text",
        action="store_true",
        help="leave out the text-prompt projection (for the official segment_anything builders)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="base checkpoint of a LoRA run (default: the path the checkpoint records)",
    )
    parser.add_argument(
        "--adapter-only",
        action="store_true",
        help="LoRA run: write only the adapter (and fully trained parts) as out.safetensors",
    )
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(
            args.checkpoint,
            args.output,
            model_type=args.model_type,
            image_size=args.image_size,
            prefix=args.prefix,
            drop_text=args.drop_text,
            base=args.base,
            adapter_only=args.adapter_only,
        )
    except CheckpointError as err:  # an unreadable or unsafe file: bad input, like argparse's
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
