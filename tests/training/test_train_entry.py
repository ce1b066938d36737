"""The training entry point: configs compose, a few steps run end to end, metrics and
checkpoints are written, and a resumed run continues exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sam_lightning._config import config_dir
from sam_lightning.train import train
from sam_lightning.training.evaluation import interior_points

TINY = [
    "+exp=demo",
    "model.image_size=64",
    "data.train.num_images=4",
    "data.train.image_size=64",
    "data.val.num_images=2",
    "data.val.image_size=64",
    "data.batch_size=2",
    "data.max_masks=3",
    "training.num_point_rounds=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def config(*overrides: str) -> dict:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_demo_experiment_composes_from_the_groups():
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["+exp=demo"])
    assert cfg.model.type == "vit_tiny" and cfg.run_name == "demo"
    assert cfg.optim.betas == [0.9, 0.999] and cfg.training.focal_weight == 20.0
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        paper = compose("train")
    assert paper.optim.milestones == [60000, 86666] and paper.trainer.max_steps == 90000


def test_a_few_steps_write_metrics_and_checkpoints(tmp_path):
    metrics = train(config("trainer.max_steps=2"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"val/miou_1pt", "val/miou_box", "train/loss"} <= set(saved)
    assert saved["step"] == 2
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"]


def test_resume_at_an_epoch_boundary_continues_exactly(tmp_path):
    """2 steps (one epoch), then resume for one more step, equals 3 steps in one go: the
    weights, optimiser and schedule state, data order and prompt sampling all continue."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    no_val = "trainer.val_check_interval=100"  # checkpoints at the end of each epoch
    train(config("trainer.max_steps=3", no_val), straight)
    train(config("trainer.max_steps=2", no_val), split)
    first_epoch = final_weights(split)
    train(config("trainer.max_steps=3", "resume=true", no_val), split)
    expected, actual = final_weights(straight), final_weights(split)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    name = "model.mask_decoder.iou_token.weight"
    assert not torch.equal(first_epoch[name], expected[name]), "the resumed step must train"


def test_command_line_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam_lightning.train",
            *TINY,
            "trainer.max_steps=1",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 1
    assert (tmp_path / ".hydra" / "config.yaml").is_file()


def test_interior_point_is_the_deepest_pixel():
    masks = torch.zeros(3, 40, 60, dtype=torch.bool)
    masks[0, 10:31, 5:26] = True  # a 21x21 square: centre (15, 20)
    masks[1, 0:3, 50:53] = True
    points = interior_points(masks)
    assert points[0].tolist() == [15, 20]
    assert points[1].tolist() == [51, 1]
    assert points[2].tolist() == [0, 0]
    big = torch.zeros(1, 1024, 1024, dtype=torch.bool)
    big[0, 100:701, 200:401] = True  # coarse grid path: the point must lie deep inside
    x, y = interior_points(big)[0].tolist()
    # ties go to the first pixel in raster order: the top of the tall plateau
    assert big[0, y, x] and 280 <= x <= 320 and 190 <= y <= 610
