"""Optimisation of SAM training (paper App. A): freezing, AdamW parameter groups with
layer-wise learning-rate decay for the ViT, and linear warm-up followed by step decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from sam_lightning.modeling.sam import PARTS, Sam


def freeze(model: Sam, parts: Iterable[str]) -> None:
    """Turns off gradients of the named parts (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``), e.g. to fine-tune the decoder on a frozen encoder, and of the
    parameters forward never uses (:meth:`Sam.unused_parameters`: no gradient ever reaches
    them, which DDP would report as an error)."""
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"cannot freeze {part!r}: the parts are {', '.join(PARTS)}")
        getattr(model, part).requires_grad_(False)
    for parameter in model.unused_parameters():
        parameter.requires_grad_(False)


def layer_decay_exponent(model: Sam, name: str) -> int:
    """Exponent of the layer-wise decay of parameter ``name``: the image encoder's (its
    ``layer_decay_exponent``: e.g. ``L + 1 - (i + 1)`` for ViT block ``i`` of ``L``), 0 for
    the prompt encoder and the mask decoder, which get the full rate."""
    encoder_name = name.removeprefix("image_encoder.")
    if encoder_name == name:
        return 0
    return int(model.image_encoder.layer_decay_exponent(encoder_name))


def _no_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """Biases, norm scales and embeddings (1-D tensors) and position tables are not decayed,
    as in MAE/ViTDet fine-tuning, nor TinyViT's attention biases (as in TinyViT's training)."""
    return parameter.ndim <= 1 or name.endswith(
        ("pos_embed", "rel_pos_h", "rel_pos_w", "attention_biases")
    )


def parameter_groups(
    model: Sam, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: ``lr * layer_decay ** e`` with
    the exponent ``e`` of :func:`layer_decay_exponent` (ViT block ``i`` of ``L``:
    ``L + 1 - (i + 1)``, the embeddings ``L + 1``, the neck, prompt encoder and decoder 0);
    1-D parameters and position tables have no weight decay."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exponent = layer_decay_exponent(model, name)
        decay = not _no_weight_decay(name, parameter)
        group = groups.setdefault(
            (-exponent, decay),
            {
                "params": [],
                "names": [],
                "lr": lr * layer_decay**exponent,
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


def lightning_optimizers(model: Sam, hparams: Any) -> dict[str, Any]:
    """``configure_optimizers``' answer for a training module whose ``hparams`` hold the
    optimiser settings (``lr``, ``weight_decay``, ``betas``, ``layer_decay``,
    ``warmup_steps``, ``milestones``, ``decay_factor``): AdamW and its per-step schedule."""
    optimizer, scheduler = build_optimizer(
        model,
        lr=hparams.lr,
        weight_decay=hparams.weight_decay,
        betas=tuple(hparams.betas),
        layer_decay=hparams.layer_decay,
        warmup_steps=hparams.warmup_steps,
        milestones=hparams.milestones,
        decay_factor=hparams.decay_factor,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def optim_hparams(
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    layer_decay: float,
    warmup_steps: int,
    milestones: Sequence[int],
    decay_factor: float,
) -> dict[str, Any]:
    """The optimiser settings as the plain values a checkpoint's ``hyper_parameters`` keep
    (read back with ``weights_only=True``), as :func:`lightning_optimizers` reads them."""
    return {
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "betas": [float(b) for b in betas],
        "layer_decay": float(layer_decay),
        "warmup_steps": int(warmup_steps),
        "milestones": [int(m) for m in milestones],
        "decay_factor": float(decay_factor),
    }
