"""Exporting a training checkpoint to the official SAM weights layout: the export loads in
our model and, strictly, in the official one, with the same outputs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from sam_test_models import build_official
from torch.utils.data import DataLoader

from sam_lightning.export import export_checkpoint, read_training_checkpoint
from sam_lightning.inference import SamPredictor
from sam_lightning.modeling import UnsafeCheckpointError, build_sam, load_state_dict_file
from sam_lightning.training.module import SamTrainingModule

SIZE = 64
#: The ``vit_tiny`` registry entry: embed_dim, depth, heads, global blocks, window side.
VIT_TINY = {"embed_dim": 128, "depth": 4, "num_heads": 4, "global": (1, 3), "window": 14}
ATOL = 1e-4


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random values in every weight (the init leaves zeros in ``pos_embed`` and
    ``rel_pos_*``, which would hide swapped tensors)."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        std = 1 / math.sqrt(tensor[0].numel()) if tensor.ndim >= 2 else 0.5
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w", "gaussian_matrix")):
            std = 0.5
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
        if tensor.ndim == 1 and name.endswith("weight"):
            tensor.add_(1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """(Lightning checkpoint after one real training step of a randomised vit_tiny, the
    SAM weights it must hold)."""
    L.seed_everything(0)
    module = SamTrainingModule(
        model_type="vit_tiny", image_size=SIZE, num_point_rounds=1, warmup_steps=1
    )
    randomize_(module.model, seed=1)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 30:44, 20:60] = True
    batch = {
        "images": torch.randint(0, 256, (1, 3, SIZE, SIZE)).float(),
        "input_size": torch.tensor([[48, 64]]),
        "masks": masks,
        "image_index": torch.tensor([0, 0]),
    }
    root = tmp_path_factory.mktemp("run")
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, DataLoader([batch], batch_size=None))
    path = root / "step=1.ckpt"
    trainer.save_checkpoint(path)
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    assert any(not torch.equal(weights[k], before[k]) for k in weights), "no step was taken"
    return path, weights


def assert_weights(
    state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], ordered: bool = True
) -> None:
    if ordered:
        assert list(state_dict) == list(expected)  # same keys, in the model's order
    assert state_dict.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state_dict[key], value), key


def resave(path: Path, out: Path, edit) -> Path:
    """A copy of the checkpoint ``path`` changed by ``edit(checkpoint_dict)``."""
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, out)
    return out


def test_export_is_the_official_layout_and_loads_in_our_model(trained, tmp_path):
    ckpt, weights = trained
    out = export_checkpoint(ckpt, tmp_path / "sam_tiny.pth")
    assert out == tmp_path / "sam_tiny.pth"
    raw = torch.load(out, weights_only=True)
    assert type(raw) is dict and all(type(v) is torch.Tensor for v in raw.values())
    assert not any(key.startswith("model.") for key in raw)
    assert_weights(raw, weights)

    model = build_sam("vit_tiny", image_size=SIZE, checkpoint=out)
    assert_weights(model.state_dict(), weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sam_tiny.pth"]  # no temp files


@torch.no_grad()
def test_export_loads_strictly_in_the_official_model(trained, official, tmp_path):
    ckpt, weights = trained
    out = export_checkpoint(ckpt, tmp_path / "sam_tiny.pth")
    ours = build_sam("vit_tiny", image_size=SIZE, checkpoint=out)
    blocks = ours.image_encoder.blocks  # the official model below has our vit_tiny size
    assert (len(blocks), blocks[0].attn.num_heads) == (VIT_TINY["depth"], VIT_TINY["num_heads"])
    assert [b.window_size for b in blocks] == [14, 0, 14, 0]

    reference = build_official(
        VIT_TINY["embed_dim"],
        VIT_TINY["depth"],
        VIT_TINY["num_heads"],
        VIT_TINY["global"],
        image_size=SIZE,
        window_size=VIT_TINY["window"],
    )  # the official builders only make vit_b/l/h at 1024
    with open(out, "rb") as f:  # as the official build_sam does
        result = reference.load_state_dict(torch.load(f), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_weights(reference.state_dict(), weights)

    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected_predictor, predictor = official.SamPredictor(reference), SamPredictor(ours)
    expected_predictor.set_image(image)
    predictor.set_image(image)
    torch.testing.assert_close(
        predictor.get_image_embedding(), expected_predictor.features, atol=ATOL, rtol=ATOL
    )
    prompts = {
        "point_coords": np.array([[20.0, 30.0], [50.0, 10.0]]),
        "point_labels": np.array([1, 0]),
        "box": np.array([5.0, 8.0, 40.0, 44.0]),
        "return_logits": True,
    }
    expected = expected_predictor.predict(**prompts)
    actual = predictor.predict(**prompts)
    for name, a, e in zip(("masks", "scores", "low_res_logits"), actual, expected):
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=ATOL, err_msg=name)
    assert np.abs(expected[0]).max() > 0.1  # non-trivial logits


def test_safetensors_export(trained, tmp_path):
    ckpt, weights = trained
    out = export_checkpoint(ckpt, tmp_path / "sam_tiny.safetensors")
    assert out.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    assert_weights(load_state_dict_file(out), weights, ordered=False)  # safetensors sorts


def test_command_line(trained, tmp_path):
    ckpt, weights = trained
    out = tmp_path / "exported" / "sam.pth"
    command = [sys.executable, "-m", "sam_lightning.export"]
    result = subprocess.run(
        [*command, str(ckpt), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(out) in result.stdout
    assert_weights(torch.load(out, weights_only=True), weights)

    # --model-type/--image-size for a checkpoint without hyper-parameters; errors are
    # reported as one message, without a traceback
    bare = resave(ckpt, tmp_path / "bare.ckpt", lambda c: c.pop("hyper_parameters"))
    result = subprocess.run([*command, str(bare), str(out)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "bare.ckpt" in result.stderr and "--model-type" in result.stderr
    assert "Traceback" not in result.stderr
    os.remove(out)
    args = [str(bare), str(out), "--model-type", "vit_tiny", "--image-size", str(SIZE)]
    result = subprocess.run([*command, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_weights(torch.load(out, weights_only=True), weights)


def test_hyper_parameters_and_overrides(trained, tmp_path):
    ckpt, weights = trained
    weights_read, hparams = read_training_checkpoint(ckpt)
    assert hparams["model_type"] == "vit_tiny" and hparams["image_size"] == SIZE
    assert_weights(weights_read, weights)

    def claim_vit_b(checkpoint: dict) -> None:
        checkpoint["hyper_parameters"]["model_type"] = "vit_b"

    wrong = resave(ckpt, tmp_path / "wrong.ckpt", claim_vit_b)
    with pytest.raises(ValueError, match=r"wrong\.ckpt.*'vit_b'.*image_size=64") as info:
        export_checkpoint(wrong, tmp_path / "a.pth")
    lines = str(info.value).splitlines()
    assert lines[1].startswith("  missing keys (112): image_encoder.blocks.4.norm1.weight, ")
    assert lines[1].endswith(", ... (92 more)") and lines[1].count(",") == 20
    assert lines[2].startswith("  wrong shapes (60): image_encoder.pos_embed (checkpoint (1, 4, 4")
    assert len(lines) == 3
    assert not (tmp_path / "a.pth").exists()
    out = export_checkpoint(wrong, tmp_path / "b.pth", model_type="vit_tiny")  # override
    assert_weights(torch.load(out, weights_only=True), weights)
    with pytest.raises(ValueError, match=r"image_encoder\.pos_embed \(checkpoint \(1, 4, 4"):
        export_checkpoint(ckpt, tmp_path / "c.pth", image_size=128)


def test_mismatched_keys_are_named(trained, tmp_path):
    ckpt, _ = trained

    def break_keys(checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        del state["model.mask_decoder.iou_token.weight"]
        state["model.image_encoder.blocks.7.attn.qkv.weight"] = torch.zeros(3)

    bad = resave(ckpt, tmp_path / "bad.ckpt", break_keys)
    with pytest.raises(ValueError) as info:
        export_checkpoint(bad, tmp_path / "out.pth")
    message = str(info.value)
    assert "bad.ckpt" in message and "'vit_tiny'" in message
    assert "\n  missing keys (1): mask_decoder.iou_token.weight\n" in message
    assert message.endswith("\n  unexpected keys (1): image_encoder.blocks.7.attn.qkv.weight")
    assert not (tmp_path / "out.pth").exists()


def test_files_that_are_not_training_checkpoints(trained, tmp_path):
    ckpt, _ = trained
    official_layout = export_checkpoint(ckpt, tmp_path / "official.pth")
    with pytest.raises(ValueError, match=r"official\.pth is not a training checkpoint.*'state"):
        export_checkpoint(official_layout, tmp_path / "again.pth")
    safetensors = export_checkpoint(ckpt, tmp_path / "sam.safetensors")
    with pytest.raises(ValueError, match=r"sam\.safetensors is not a training checkpoint"):
        export_checkpoint(safetensors, tmp_path / "again.pth")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.ckpt"):
        export_checkpoint(garbage, tmp_path / "again.pth")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "again.pth")
    evil = resave(ckpt, tmp_path / "evil.ckpt", lambda c: c.update(callbacks={"x": os.system}))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt"):
        export_checkpoint(evil, tmp_path / "again.pth")
    assert not (tmp_path / "again.pth").exists()


def test_refuses_to_overwrite_the_checkpoint(trained, tmp_path):
    ckpt, _ = trained
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        export_checkpoint(ckpt, ckpt.parent / ".." / ckpt.parent.name / ckpt.name)
    assert ckpt.read_bytes() == before


def test_a_text_model_keeps_or_drops_its_text_projection(trained, tmp_path):
    """A checkpoint trained with text prompts exports with its projection (for build_sam with
    text_embed_dim) or, with drop_text, as the plain official layout."""
    ckpt, weights = trained
    projection = {"weight": torch.randn(256, 16), "bias": torch.randn(256)}

    def add_projection(checkpoint):
        for name, value in projection.items():
            checkpoint["state_dict"][f"model.prompt_encoder.text_projection.{name}"] = value

    text_ckpt = resave(ckpt, tmp_path / "text.ckpt", add_projection)
    out = export_checkpoint(text_ckpt, tmp_path / "text.pth")
    model = build_sam("vit_tiny", image_size=SIZE, checkpoint=out, text_embed_dim=16)
    torch.testing.assert_close(model.prompt_encoder.text_projection.weight, projection["weight"])
    plain = export_checkpoint(text_ckpt, tmp_path / "plain.pth", drop_text=True)
    assert_weights(torch.load(plain, weights_only=True), weights)
