"""Runs that freeze parts of a base checkpoint write only what they train: the checkpoint
names its base, resume is exact, the export puts the base back, other consumers are told
to export, and a mismatched base or run is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_train_entry import assert_same_weights, config, final_weights, logged_losses

from sam_lightning.entry_points import build_model
from sam_lightning.export import export_checkpoint
from sam_lightning.file_io import sha256_file
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import CheckpointError, save_checkpoint
from sam_lightning.train import train
from sam_lightning.training.module import SamTrainingModule
from sam_lightning.training.optim import PARTS, freeze
from sam_lightning.training.trained_only import trained_state_names

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from sam_test_models import randomize_  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: bitwise comparisons

FROZEN = [
    "training.frozen=[image_encoder]",
    "trainer.val_check_interval=2",
    "checkpoint.every_n_steps=0",
]


def save_random_base(path: Path, seed: int) -> Path:
    save_checkpoint(randomize_(build_sam("vit_nano", image_size=64), seed=seed), path)
    return path


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    return save_random_base(tmp_path_factory.mktemp("base") / "base_nano.pth", seed=0)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, base_file):
    run_dir = tmp_path_factory.mktemp("frozen_straight")
    train(config("trainer.max_steps=4", f"model.checkpoint={base_file}", *FROZEN), run_dir)
    return run_dir


def test_checkpoint_holds_the_trained_parts_and_names_the_base(straight_run, base_file):
    state = torch.load(straight_run / "checkpoints" / "last.ckpt", weights_only=True)
    module = SamTrainingModule(
        model_type="vit_nano", checkpoint=str(base_file), image_size=64, frozen=["image_encoder"]
    )
    trained = {f"model.{name}" for name, p in module.model.named_parameters() if p.requires_grad}
    buffers = {"model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"}
    assert set(state["state_dict"]) == trained | buffers  # the trained parts' buffers too
    assert any(key.startswith("model.mask_decoder.") for key in trained)
    assert not any(key.startswith("model.image_encoder.") for key in state["state_dict"])
    hparams = state["hyper_parameters"]
    assert hparams["trained_only"] and hparams["checkpoint"] == str(base_file)
    assert hparams["base_sha256"] == sha256_file(base_file)
    assert set(state["optimizer_states"][0]["state"])  # the trained parts' AdamW state


@pytest.mark.parametrize("stop", [1, 3])
def test_resume_continues_exactly(tmp_path, straight_run, base_file, stop):
    base = f"model.checkpoint={base_file}"
    train(config(f"trainer.max_steps={stop}", base, *FROZEN), tmp_path)
    train(config("trainer.max_steps=4", base, "resume=true", *FROZEN), tmp_path)
    assert logged_losses(tmp_path) == logged_losses(straight_run)
    assert_same_weights(final_weights(straight_run), final_weights(tmp_path))


def test_export_puts_the_frozen_base_back(tmp_path, straight_run, base_file):
    ckpt = straight_run / "checkpoints" / "last.ckpt"
    exported = torch.load(export_checkpoint(ckpt, tmp_path / "model.pth"), weights_only=True)
    module = SamTrainingModule(
        model_type="vit_nano", checkpoint=str(base_file), image_size=64, frozen=["image_encoder"]
    )
    module.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"], strict=False)
    assert_same_weights(module.model.state_dict(), exported)  # every key, bit for bit
    base = torch.load(base_file, weights_only=True)
    decoder = [key for key in base if key.startswith("mask_decoder.")]
    assert any(not torch.equal(exported[key], base[key]) for key in decoder)  # it trained
    assert all(torch.equal(exported[k], v) for k, v in base.items() if "image_encoder." in k)
    build_model("vit_nano", tmp_path / "model.pth", 64)  # strict load


def test_consumers_are_told_to_export(straight_run):
    ckpt = straight_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="holds only the parameters .*sam_lightning.export"):
        build_model("vit_nano", ckpt, 64)


def copy_run(source: Path, run: Path) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(
        (source / "checkpoints" / "last.ckpt").read_bytes()
    )
    return run


def test_resume_on_another_base_or_settings_is_refused(tmp_path, straight_run, base_file):
    other = save_random_base(tmp_path / "other.pth", seed=1)
    run = copy_run(straight_run, tmp_path / "run")
    with pytest.raises(ValueError, match="trained on the base checkpoint .*give the base"):
        train(
            config("trainer.max_steps=5", f"model.checkpoint={other}", "resume=true", *FROZEN), run
        )
    whole = [f"model.checkpoint={base_file}", "resume=true", "training.frozen=[]"]
    with pytest.raises(ValueError, match=r"holds only the parameters .*training.frozen=\['image"):
        train(config("trainer.max_steps=5", *whole), run)
    prompt_encoder_too = [*whole[:2], *FROZEN, "training.frozen=[image_encoder,prompt_encoder]"]
    with pytest.raises(ValueError, match="holds other trained parameters"):
        train(config("trainer.max_steps=5", *prompt_encoder_too), run)


def test_a_frozen_random_model_keeps_the_whole_model(tmp_path):
    """Without a base checkpoint there is nothing to rebuild frozen weights from."""
    module = SamTrainingModule(model_type="vit_nano", image_size=64, frozen=["image_encoder"])
    assert module.trained_only is None and not module.hparams["trained_only"]
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert any(key.startswith("model.image_encoder.") for key in checkpoint["state_dict"])


def test_buffers_of_the_parts_that_train_are_kept():
    """TinyViT's BatchNorm statistics move whenever its encoder trains: a checkpoint that
    left them out would resume (and export) with the base's statistics."""
    model = build_sam("vit_t")
    freeze(model, ["mask_decoder"])
    names = set(trained_state_names(model, PARTS))
    assert "image_encoder.patch_embed.seq.0.bn.running_mean" in names
    assert "image_encoder.patch_embed.seq.0.bn.num_batches_tracked" in names
    assert not any(name.startswith("mask_decoder.") for name in names)
    assert "image_encoder.head.weight" not in names  # never used, never trained
    freeze(model, ["image_encoder"])
    assert not any(name.startswith("image_encoder.") for name in trained_state_names(model, PARTS))
