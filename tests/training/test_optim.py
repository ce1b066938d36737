"""Freezing, layer-wise learning-rate decay groups and the warm-up + step-decay schedule."""

from __future__ import annotations

import pytest
import torch

from sam_lightning.modeling.build import build_sam
from sam_lightning.training.optim import (
    build_optimizer,
    freeze,
    layer_decay_exponent,
    parameter_groups,
    warmup_step_decay,
)


@pytest.fixture(scope="module")
def model():
    return build_sam("vit_tiny", image_size=128)


def lr_by_name(groups) -> dict[str, float]:
    return {name: group["lr"] for group in groups for name in group["names"]}


def test_groups_cover_every_trainable_parameter_once(model):
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.1, layer_decay=0.8)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_layer_decay_rates(model):
    depth = len(model.image_encoder.blocks)
    lrs = lr_by_name(parameter_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5))
    assert lrs["image_encoder.patch_embed.proj.weight"] == pytest.approx(0.5 ** (depth + 1))
    assert lrs["image_encoder.pos_embed"] == pytest.approx(0.5 ** (depth + 1))
    for i in range(depth):
        assert lrs[f"image_encoder.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.5 ** (depth - i))
    assert lrs["image_encoder.neck.0.weight"] == 1.0
    assert lrs["mask_decoder.iou_token.weight"] == 1.0
    assert lrs["prompt_encoder.no_mask_embed.weight"] == 1.0


def test_weight_decay_skips_biases_norms_and_position_tables(model):
    groups = parameter_groups(model, lr=1.0, weight_decay=0.1)
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert decay["image_encoder.blocks.0.attn.qkv.weight"] == 0.1
    assert decay["image_encoder.blocks.0.attn.qkv.bias"] == 0.0
    assert decay["image_encoder.blocks.0.norm1.weight"] == 0.0
    assert decay["image_encoder.pos_embed"] == 0.0
    assert decay["image_encoder.blocks.0.attn.rel_pos_h"] == 0.0


def test_layer_decay_exponents():
    vit_b = build_sam("vit_b", image_size=128)
    assert layer_decay_exponent(vit_b, "image_encoder.blocks.11.mlp.lin1.weight") == 1
    assert layer_decay_exponent(vit_b, "image_encoder.blocks.0.attn.qkv.weight") == 12
    assert layer_decay_exponent(vit_b, "image_encoder.pos_embed") == 13
    assert layer_decay_exponent(vit_b, "image_encoder.neck.2.weight") == 0
    assert layer_decay_exponent(vit_b, "mask_decoder.output_upscaling.0.weight") == 0


def test_freezing_removes_parts_from_the_optimiser():
    model = build_sam("vit_tiny", image_size=128)
    freeze(model, ["image_encoder", "prompt_encoder"])
    names = {n for g in parameter_groups(model, 1e-3, 0.1) for n in g["names"]}
    assert names and all(n.startswith("mask_decoder.") for n in names)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    with pytest.raises(ValueError, match="cannot freeze 'decoder'"):
        freeze(model, ["decoder"])
    freeze(model, ["mask_decoder"])
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(model, 1e-3, 0.1)


def test_schedule_warms_up_then_steps_down():
    multiplier = warmup_step_decay(250, [60_000, 86_666], 0.1)
    assert multiplier(0) == pytest.approx(1 / 250)
    assert multiplier(124) == pytest.approx(0.5)
    assert multiplier(249) == 1.0 and multiplier(59_999) == 1.0
    assert multiplier(60_000) == pytest.approx(0.1)
    assert multiplier(86_666) == pytest.approx(0.01)
    assert warmup_step_decay(0, [])(0) == 1.0


def test_build_optimizer_steps_the_schedule(model):
    optimizer, scheduler = build_optimizer(
        model, lr=8e-4, layer_decay=0.8, warmup_steps=4, milestones=[6]
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    top = max(g["lr"] for g in optimizer.param_groups)
    assert top == pytest.approx(8e-4 / 4)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert max(g["lr"] for g in optimizer.param_groups) == pytest.approx(8e-4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert max(g["lr"] for g in optimizer.param_groups) == pytest.approx(8e-5)
