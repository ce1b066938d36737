"""Text-prompt training (App. D.5) in the training module: ``+exp=text_demo`` with the tiny
random CLIP trains, its CLIP image prompts reach the model, and the loss falls on a fixed
batch."""

from __future__ import annotations

import csv

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sam_lightning.entry_points import config_dir
from sam_lightning.train import train
from sam_lightning.training.module import SamTrainingModule

FAST = [
    "data.train.num_images=4",
    "data.val.num_images=2",
    "data.batch_size=2",
    "data.max_masks=4",
    "data.num_workers=0",
    "training.val_clicks=2",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def text_demo(*overrides: str) -> dict:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["+exp=text_demo", *FAST, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def train_losses(run_dir) -> list[float]:
    (path,) = (run_dir / "csv").glob("version_*/metrics.csv")
    with path.open() as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]]


def test_text_demo_loss_falls_on_a_fixed_batch(tmp_path):
    config = text_demo(
        "trainer.max_steps=40",
        "data.train.num_images=2",  # one batch of 2 images with all their masks: the same
        "data.max_masks=16",  # batch every step (only the prompts are drawn anew)
        "trainer.val_check_interval=40",
        "trainer.limit_val_batches=1",
        "optim.warmup_steps=5",
    )
    metrics = train(config, tmp_path)
    losses = train_losses(tmp_path)
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
    assert 0.0 <= metrics["val/miou_clip"] <= 1.0  # the CLIP-prompt validation ran
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["model.prompt_encoder.text_projection.weight"].shape == (128, 16)
    assert not any(key.startswith("clip") or ".clip." in key for key in state)  # CLIP stays out


def test_clip_prompts_go_to_the_large_masks_only(tmp_path):
    settings = {"clip_tiny": {"image_size": 32, "patch_size": 8}, "min_mask_area": 100}
    module = SamTrainingModule("vit_nano", image_size=64, text=settings)
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, :5, :5] = True  # 25 px: too small
    masks[1, 10:30, 10:30] = True  # 400 px
    masks[2, 40:60, 0:64] = True
    batch = {
        "images": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8),
        "masks": masks,
        "image_index": torch.tensor([0, 0, 1]),
        "input_size": torch.tensor([[64, 64], [64, 64]]),
        "original_size": torch.tensor([[64, 64], [32, 32]]),  # image 1 was upscaled ×2
    }
    generator = torch.Generator().manual_seed(0)
    embeddings, use = module._clip_prompts(batch, generator, validation=False)
    # Image 1's mask covers 1280 input pixels but 320 original ones: still ≥ 100.
    assert use.tolist() == [False, True, True]
    assert embeddings.shape == (3, 16) and torch.all(embeddings[0] == 0)
    assert torch.all(embeddings[1:].norm(dim=1) > 0)
    module.hparams.text["min_mask_area"] = 400
    assert module._clip_prompts(batch, generator, validation=True)[1].tolist() == [
        False,
        True,
        False,
    ]


def test_text_settings_are_checked():
    with pytest.raises(ValueError, match="exactly one of clip_path and clip_tiny"):
        SamTrainingModule("vit_nano", image_size=64, text={"min_mask_area": 1})
    with pytest.raises(ValueError, match="unknown training.text settings"):
        SamTrainingModule("vit_nano", image_size=64, text={"clip_tiny": {}, "area": 1})
    with pytest.raises(ValueError, match="expand_range"):
        SamTrainingModule(
            "vit_nano", image_size=64, text={"clip_tiny": {}, "expand_range": [0.5, 2]}
        )
