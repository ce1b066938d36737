"""Optimisation of SAM training (paper App. A): freezing, AdamW parameter groups with
layer-wise learning-rate decay for the ViT, and linear warm-up followed by step decay."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from sam_lightning.modeling.sam import Sam

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


def freeze(model: Sam, parts: Iterable[str]) -> None:
    """Turns off gradients of the named parts (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``), e.g. to fine-tune the decoder on a frozen encoder."""
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"cannot freeze {part!r}: the parts are {', '.join(PARTS)}")
        getattr(model, part).requires_grad_(False)


def encoder_layer_id(name: str, num_blocks: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the patch and position embeddings,
    ``i + 1`` for encoder block ``i``, ``num_blocks + 1`` for everything after the blocks
    (the neck, the prompt encoder and the mask decoder, which get the full rate)."""
    if name.startswith(("image_encoder.patch_embed.", "image_encoder.pos_embed")):
        return 0
    match = _BLOCK.match(name)
    return int(match.group(1)) + 1 if match else num_blocks + 1


def _no_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """Biases, norm scales and embeddings (1-D tensors) and position tables are not decayed,
    as in MAE/ViTDet fine-tuning."""
    return parameter.ndim <= 1 or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))


def parameter_groups(
    model: Sam, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: encoder block ``i`` of ``L``
    gets ``lr * layer_decay ** (L + 1 - (i + 1))``, the embeddings ``lr * layer_decay **
    (L + 1)``, the rest ``lr``; 1-D parameters and position tables have no weight decay."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    num_blocks = len(model.image_encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer = encoder_layer_id(name, num_blocks)
        decay = not _no_weight_decay(name, parameter)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "lr": lr * layer_decay ** (num_blocks + 1 - layer),
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: every part of the model is frozen")
    return [groups[key] for key in sorted(groups)]


def warmup_step_decay(
    warmup_steps: int, milestones: Sequence[int], factor: float = 0.1
) -> Callable[[int], float]:
    """Learning-rate multiplier of step ``s``: linear warm-up ``(s + 1) / warmup_steps``
    for the first ``warmup_steps`` steps, times ``factor`` for every milestone ``<= s``."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    ordered = sorted(int(m) for m in milestones)

    def multiplier(step: int) -> float:
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warmup * factor ** sum(step >= m for m in ordered)

    return multiplier


def build_optimizer(
    model: Sam,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float = 1.0,
    warmup_steps: int = 250,
    milestones: Sequence[int] = (),
    decay_factor: float = 0.1,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`parameter_groups` and a per-step :func:`warmup_step_decay`."""
    groups = parameter_groups(model, lr, weight_decay, layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    schedule = warmup_step_decay(warmup_steps, milestones, decay_factor)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
