"""LoRA adapters (peft) in training: what trains, learning rates by depth, small
checkpoints that name their base, exact resume, merged export and adapters applied at
inference."""

from __future__ import annotations

import re

import pytest
import torch
from test_train_entry import assert_same_weights, config, final_weights, logged_losses

from sam_lightning.entry_points import build_model
from sam_lightning.export import export_checkpoint
from sam_lightning.export import main as export_main
from sam_lightning.file_io import sha256_file
from sam_lightning.modeling.adapters import (
    LoraSpec,
    adapted_modules,
    check_adapter,
    merge_adapter,
    read_adapter,
)
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import save_checkpoint
from sam_lightning.train import train
from sam_lightning.training.lora import adapter_tensors, inject_lora
from sam_lightning.training.module import SamTrainingModule
from sam_lightning.training.optim import PARTS, parameter_groups
from sam_lightning.training.trained_only import trainable_names, trained_state_names

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: bitwise comparisons


def random_model(model_type: str = "vit_tiny", image_size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    model = build_sam(model_type, image_size=image_size)
    with torch.no_grad():  # non-zero everywhere, so that a weight left out shows
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.02)
    return model


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base_nano.pth"
    save_checkpoint(random_model("vit_nano"), path)
    return path


def count(model, pattern: str) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and re.search(pattern, n)
    )


@pytest.mark.parametrize("qkv", ["qv", "qkv"])
def test_lora_trains_only_the_adapters_and_the_unfrozen_parts(qkv):
    model = random_model()
    encoder = model.image_encoder
    dim, blocks, rank = encoder.blocks[0].attn.proj.in_features, len(encoder.blocks), 4
    decoder = sum(p.numel() for p in model.mask_decoder.parameters())
    adapted = inject_lora(model, LoraSpec(rank=rank, qkv=qkv), frozen=["prompt_encoder"])
    # q and v (or the fused qkv, 3·dim outputs) and proj of every block.
    per_block = (2 * 2 * rank * dim if qkv == "qv" else rank * dim + 3 * dim * rank) + (
        2 * rank * dim
    )
    assert count(model, r"\.lora_") == blocks * per_block
    assert count(model, r"^image_encoder\.") == blocks * per_block  # base frozen
    assert count(model, r"^mask_decoder\.") == decoder  # trains in full
    assert count(model, r"^prompt_encoder\.") == 0  # frozen by the settings
    assert len(adapted) == blocks * (3 if qkv == "qv" else 2)
    # inject_adapter_in_model keeps SAM's names (get_peft_model would prefix base_model.model.)
    assert all(
        name.startswith(("image_encoder.", "mask_decoder.")) for name in trainable_names(model)
    )


def test_adapters_start_as_the_identity_and_train_by_depth():
    model = random_model()
    x = torch.rand(1, 3, 64, 64)
    before = model.image_encoder(x)
    inject_lora(model, LoraSpec(rank=2, targets=("encoder_attn", "encoder_mlp")))
    assert torch.allclose(model.image_encoder(x), before, atol=1e-6)  # B starts at zero
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.1, layer_decay=0.5)
    blocks = len(model.image_encoder.blocks)
    seen = 0
    for group in groups:
        for name in group["names"]:
            found = re.match(r"image_encoder\.blocks\.(\d+)\..*lora_", name)
            if found:
                seen += 1
                depth = int(found[1]) + 1
                assert group["lr"] == pytest.approx(1e-3 * 0.5 ** (blocks + 1 - depth)), name
    assert seen == 10 * blocks  # A and B of q, v, proj, lin1 and lin2 in every block


def test_target_patterns_match_whole_names_and_linear_layers_only():
    model = random_model()
    assert "image_encoder.patch_embed.proj" not in adapted_modules(model, LoraSpec(rank=1))
    with pytest.raises(ValueError, match="not linear layers.*patch_embed.proj"):
        adapted_modules(model, LoraSpec(rank=1, targets=(r".*\.proj",)))
    with pytest.raises(ValueError, match=r"\['qkv'\] match no module"):
        adapted_modules(model, LoraSpec(rank=1, targets=("qkv",)))  # a suffix is not a name
    decoder = adapted_modules(model, LoraSpec(rank=1, targets=("decoder_attn",)))
    assert len(decoder) == 4 * (2 * 3 + 1) and all(n.startswith("mask_decoder.") for n in decoder)
    with pytest.raises(ValueError, match="rank must be > 0"):
        LoraSpec(rank=0)
    with pytest.raises(ValueError, match="qkv must be one of"):
        LoraSpec(rank=1, qkv="qk")


def test_merging_equals_the_adapted_model():
    base = random_model()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for qkv in ("qv", "qkv"):
        model = random_model()
        inject_lora(
            model, LoraSpec(rank=3, alpha=6, qkv=qkv, targets=("encoder_attn", "decoder_attn"))
        )
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.05)
        merged = build_sam("vit_tiny", image_size=64)
        merged.load_state_dict(merge_adapter(state, adapter_tensors(model), scaling=2.0))
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            adapted, plain = model.image_encoder(x), merged.image_encoder(x)
            assert not torch.allclose(plain, base.image_encoder(x), atol=1e-3)  # it changed
            assert torch.allclose(plain, adapted, atol=1e-4), qkv
            points = torch.rand(1, 1, 2) * 64
            labels = torch.ones(1, 1, dtype=torch.int)
            one = model.decode(adapted, point_coords=points, point_labels=labels)
            two = merged.decode(plain, point_coords=points, point_labels=labels)
        for a, b in zip(one, two):
            assert torch.allclose(a, b, atol=1e-4), qkv


# ------------------------------------------------------------------ training runs

LORA = ["model.lora.rank=4", "trainer.val_check_interval=2", "checkpoint.every_n_steps=0"]


@pytest.fixture(scope="module")
def straight_lora_run(tmp_path_factory, base_file):
    run_dir = tmp_path_factory.mktemp("lora_straight")
    train(config("trainer.max_steps=4", f"model.checkpoint={base_file}", *LORA), run_dir)
    return run_dir


def test_checkpoints_hold_what_trains_and_name_their_base(straight_lora_run, base_file):
    state = torch.load(straight_lora_run / "checkpoints" / "last.ckpt", weights_only=True)
    module = SamTrainingModule(
        model_type="vit_nano", checkpoint=str(base_file), image_size=64, lora={"rank": 4}
    )
    trained = {f"model.{n}" for n in trained_state_names(module.model, PARTS)}
    assert set(state["state_dict"]) == trained
    assert trained > {f"model.{n}" for n in trainable_names(module.model)}
    assert not any(".base_layer." in key for key in state["state_dict"])
    hparams = state["hyper_parameters"]
    assert hparams["lora"]["rank"] == 4 and hparams["trained_only"]
    assert hparams["base_sha256"] == sha256_file(base_file) == module.trained_only.base_sha256
    assert hparams["checkpoint"] == str(base_file)


@pytest.mark.parametrize("stop", [1, 3])
def test_resume_with_lora_continues_exactly(tmp_path, straight_lora_run, base_file, stop):
    base = f"model.checkpoint={base_file}"
    train(config(f"trainer.max_steps={stop}", base, *LORA), tmp_path)
    train(config("trainer.max_steps=4", base, "resume=true", *LORA), tmp_path)
    assert logged_losses(tmp_path) == logged_losses(straight_lora_run)
    assert_same_weights(final_weights(straight_lora_run), final_weights(tmp_path))


def test_resume_on_another_base_is_refused(tmp_path, straight_lora_run):
    other = tmp_path / "other.pth"
    save_checkpoint(random_model("vit_nano", seed=1), other)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(
        (straight_lora_run / "checkpoints" / "last.ckpt").read_bytes()
    )
    with pytest.raises(ValueError, match="trained on the base checkpoint .*give the base"):
        train(config("trainer.max_steps=5", f"model.checkpoint={other}", "resume=true", *LORA), run)


def test_export_merges_and_the_adapter_applies_at_inference(tmp_path, straight_lora_run, base_file):
    ckpt = straight_lora_run / "checkpoints" / "last.ckpt"
    merged_path = export_checkpoint(ckpt, tmp_path / "merged.pth")
    adapter_path = export_checkpoint(ckpt, tmp_path / "adapter.safetensors", adapter_only=True)
    assert adapter_path.stat().st_size < merged_path.stat().st_size
    merged = build_model("vit_nano", merged_path, 64)  # strict load into ours
    applied = build_model("vit_nano", base_file, 64, lora_weights=adapter_path)
    assert_same_weights(merged.state_dict(), applied.state_dict())
    unmerged = SamTrainingModule(
        model_type="vit_nano", checkpoint=str(base_file), image_size=64, lora={"rank": 4}
    )
    unmerged.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"], strict=False)
    unmerged.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = merged.image_encoder(x), unmerged.model.image_encoder(x)
        plain = build_model("vit_nano", base_file, 64).image_encoder(x)
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-4  # the adapters changed the encoder

    _, info = read_adapter(adapter_path)
    assert (info.rank, info.qkv, info.model_type, info.image_size) == (4, "qv", "vit_nano", 64)
    assert info.targets == ("encoder_attn",) and info.base_path == str(base_file)
    assert any(name.startswith("mask_decoder.") for name in info.trained)
    with pytest.raises(ValueError, match="model type: adapter 'vit_nano', model 'vit_tiny'"):
        check_adapter(info, adapter_path, model_type="vit_tiny", image_size=64, base_sha256=None)
    with pytest.raises(ValueError, match="model.lora.rank: settings 8, adapter 4"):
        check_adapter(
            info,
            adapter_path,
            model_type="vit_nano",
            image_size=64,
            base_sha256=info.base_sha256,
            spec=LoraSpec(rank=8),
        )


def test_export_refuses_another_base(tmp_path, straight_lora_run, capsys):
    other = tmp_path / "other.pth"
    save_checkpoint(random_model("vit_nano", seed=2), other)
    ckpt = straight_lora_run / "checkpoints" / "last.ckpt"
    code = export_main([str(ckpt), str(tmp_path / "out.pth"), "--base", str(other)])
    assert code == 1 and "is not the base" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(ValueError, match="the adapter .*needs its base checkpoint"):
        adapter = export_checkpoint(ckpt, tmp_path / "a.safetensors", adapter_only=True)
        build_model("vit_nano", None, 64, lora_weights=adapter)
    with pytest.raises(ValueError, match="base checkpoint: the adapter was trained on"):
        build_model("vit_nano", other, 64, lora_weights=adapter)


def test_training_starts_from_an_adapter_file(tmp_path, straight_lora_run, base_file):
    ckpt = straight_lora_run / "checkpoints" / "last.ckpt"
    adapter = export_checkpoint(ckpt, tmp_path / "adapter.safetensors", adapter_only=True)
    module = SamTrainingModule(
        model_type="vit_nano",
        checkpoint=str(base_file),
        image_size=64,
        lora={"rank": 4, "weights": str(adapter)},
    )
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    state = module.state_dict()
    for key, value in trained.items():
        assert torch.equal(state[key], value), key
    with pytest.raises(ValueError, match="model.lora.rank: settings 2, adapter 4"):
        SamTrainingModule(
            model_type="vit_nano",
            checkpoint=str(base_file),
            image_size=64,
            lora={"rank": 2, "weights": str(adapter)},
        )


def test_bf16_mixed_lora_steps_run(tmp_path, base_file):
    metrics = train(
        config(
            "trainer.max_steps=2",
            f"model.checkpoint={base_file}",
            "trainer.precision=bf16-mixed",
            *LORA,
        ),
        tmp_path,
    )
    assert metrics["step"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_segment_applies_an_adapter(tmp_path, straight_lora_run, base_file):
    import json

    import numpy as np
    from PIL import Image

    from sam_lightning import segment

    ckpt = straight_lora_run / "checkpoints" / "last.ckpt"
    adapter = export_checkpoint(ckpt, tmp_path / "adapter.safetensors", adapter_only=True)
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(image)
    common = [str(image), "--box", "4,4,40,30", "--model-type", "vit_nano", "--image-size", "64"]
    common += ["--checkpoint", str(base_file)]
    out = tmp_path / "out"
    assert segment.main([*common, "--lora-weights", str(adapter), "--output", str(out)]) == 0
    document = json.loads((out / "masks.json").read_text())
    assert document["lora_weights"] == str(adapter) and len(document["masks"]) == 1
    with pytest.raises(SystemExit) as exit_info:  # argparse: a missing adapter file
        segment.main(
            [*common, "--lora-weights", str(tmp_path / "none.safetensors"), "--output", str(out)]
        )
    assert exit_info.value.code == 2
