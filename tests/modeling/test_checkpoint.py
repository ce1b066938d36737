"""Checkpoint files: official .pth, training checkpoints, safetensors, safety, atomic saves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pickle_payloads import _Payload
from sam_test_models import build_official, randomize_

from sam_lightning.modeling import (
    UnsafeCheckpointError,
    build_sam_custom,
    checkpoint,
    load_checkpoint,
    load_state_dict_file,
    save_checkpoint,
)

TINY = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,),
    "image_size": 64,
    "window_size": 2,
}


@pytest.fixture(scope="module")
def official_tiny() -> torch.nn.Module:
    return randomize_(build_official(**TINY), seed=7)


def assert_same_weights(model: torch.nn.Module, state_dict: dict) -> None:
    ours = model.state_dict()
    assert ours.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(ours[key], value), key


def test_official_pth_loads_strictly(official_tiny, tmp_path):
    path = tmp_path / "sam_tiny.pth"
    torch.save(official_tiny.state_dict(), path)
    model = build_sam_custom(**TINY, checkpoint=path)
    assert_same_weights(model, official_tiny.state_dict())


def test_safetensors_round_trip(official_tiny, tmp_path):
    path = save_checkpoint(official_tiny, tmp_path / "sam_tiny.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors header, not a zip/pickle
    assert_same_weights(official_tiny, load_state_dict_file(path))
    model = build_sam_custom(**TINY)
    load_checkpoint(model, path)
    assert_same_weights(model, official_tiny.state_dict())


def test_saved_pth_loads_in_official_model(official_tiny, tmp_path):
    model = build_sam_custom(**TINY)
    load_checkpoint(model, save_checkpoint(official_tiny, tmp_path / "a.pth"))
    path = save_checkpoint(model, tmp_path / "b.pth")
    reference = build_official(**TINY)
    with open(path, "rb") as f:  # as the official build_sam does
        reference.load_state_dict(torch.load(f), strict=True)
    assert_same_weights(reference, official_tiny.state_dict())


@pytest.mark.parametrize("prefix", ["model.", "sam.", "model._orig_mod."])
def test_training_checkpoint_with_prefix(official_tiny, tmp_path, prefix):
    state = {prefix + k: v for k, v in official_tiny.state_dict().items()}
    state["criterion.pos_weight"] = torch.ones(1)  # other modules of the training module
    path = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "hyper_parameters": {"model_type": "vit_tiny", "lr": 1e-4},
        },
        path,
    )
    model = build_sam_custom(**TINY)
    load_checkpoint(model, path)
    assert_same_weights(model, official_tiny.state_dict())


def test_ambiguous_prefix_needs_choice(official_tiny, tmp_path):
    weights = official_tiny.state_dict()
    state = {f"{p}.{k}": v for p in ("student", "teacher") for k, v in weights.items()}
    path = tmp_path / "distill.ckpt"
    torch.save({"state_dict": state}, path)
    model = build_sam_custom(**TINY)
    with pytest.raises(ValueError, match=r"student\..*teacher\."):
        load_checkpoint(model, path)
    load_checkpoint(model, path, prefix="teacher.")
    assert_same_weights(model, weights)


@pytest.mark.parametrize("payload", ["os.system", "reduce"])
def test_pickled_callables_are_refused(official_tiny, tmp_path, payload):
    marker = tmp_path / "marker"
    evil = os.system if payload == "os.system" else _Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save({**official_tiny.state_dict(), "extra": evil}, path)
    refused = r"refusing to load .*evil\.pth.*other than tensors.*first found: \S+"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        load_state_dict_file(path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(build_sam_custom(**TINY), path)
    assert not marker.exists()


def test_mismatch_names_missing_unexpected_and_misshapen_keys(official_tiny, tmp_path):
    state = dict(official_tiny.state_dict())
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 16)
    state["image_encoder.blocks.9.attn.qkv.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = build_sam_custom(**TINY)
    with pytest.raises(ValueError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "missing keys (1): mask_decoder.iou_token.weight" in message
    assert "unexpected keys (1): image_encoder.blocks.9.attn.qkv.weight" in message
    assert "image_encoder.pos_embed (checkpoint (1, 8, 8, 16), model (1, 4, 4, 32))" in message

    with pytest.raises(ValueError, match="wrong shapes") as info:  # shapes matter even non-strict
        load_checkpoint(model, path, strict=False)
    assert "missing keys" not in str(info.value)
    del state["image_encoder.pos_embed"]
    torch.save(state, path)
    result = load_checkpoint(model, path, strict=False)
    assert set(result.missing_keys) == {"mask_decoder.iou_token.weight", "image_encoder.pos_embed"}


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nowhere" / "sam.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_state_dict_file(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_state_dict_file(garbage)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict_file(not_a_dict)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_is_atomic(official_tiny, tmp_path, monkeypatch, suffix):
    path = tmp_path / f"sam{suffix}"
    save_checkpoint({"old": torch.zeros(2)}, path)
    old_bytes = path.read_bytes()

    def fail_midway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial") if isinstance(f, (str, Path)) else f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", fail_midway)
    monkeypatch.setattr(checkpoint.torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(official_tiny, path)
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with pytest.raises(OSError):
        save_checkpoint(official_tiny, tmp_path / f"new{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
