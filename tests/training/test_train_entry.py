"""The training entry point: configs compose, a few steps run end to end, metrics and
checkpoints are written, and a resumed run continues exactly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sam_lightning.entry_points import config_dir
from sam_lightning.inference.clicks import interior_points
from sam_lightning.train import train

TINY = [
    "+exp=demo",
    "model.image_size=64",
    "data.train.num_images=4",
    "data.train.image_size=64",
    "data.val.num_images=2",
    "data.batch_size=2",
    "data.max_masks=3",
    "training.num_point_rounds=2",
    "training.val_clicks=3",
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
    assert cfg.model.type == "vit_nano" and cfg.run_name == "demo"
    assert cfg.data.train.background == "cells" and cfg.data.val.seed != cfg.data.train.seed
    assert cfg.optim.betas == [0.9, 0.999] and cfg.training.focal_weight == 20.0
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        paper = compose("train")
    assert paper.optim.milestones == [60000, 86666] and paper.trainer.max_steps == 90000


def test_a_few_steps_write_metrics_and_checkpoints(tmp_path):
    metrics = train(config("trainer.max_steps=2"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"val/miou_1pt", "val/miou_box", "val/miou_3clicks", "train/loss"} <= set(saved)
    assert saved["step"] == 2
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2


def test_the_final_metrics_are_those_of_the_final_weights(tmp_path):
    # Validation after step 3 only: step 4 follows it, so train() validates once more.
    metrics = train(config("trainer.max_steps=4", "trainer.val_check_interval=3"), tmp_path)
    rows = []
    for path in sorted((tmp_path / "csv").glob("version_*/metrics.csv")):
        with path.open() as file:
            rows += list(csv.DictReader(file))
    validations = [row for row in rows if row.get("val/miou_1pt")]
    last_train_step = max(int(row["step"]) for row in rows if row.get("train/loss"))
    # Lightning logs a validation inside fit at the step of the batch before it (2: after
    # the third step), one from trainer.validate at global_step (4: after the last step).
    assert [int(row["step"]) for row in validations] == [2, 4]
    assert int(validations[-1]["step"]) > last_train_step
    assert float(validations[-1]["val/miou_1pt"]) == pytest.approx(metrics["val/miou_1pt"])
    assert metrics["step"] == 4 and "train/loss" in metrics


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"]


def logged_losses(run_dir) -> dict[int, float]:
    """``train/loss`` per step from every CSV log of the run (a resumed run adds a version)."""
    losses = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with path.open() as file:
            for row in csv.DictReader(file):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


RESUME = ["trainer.val_check_interval=2", "checkpoint.every_n_steps=0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: bitwise comparisons


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """Uninterrupted 4-step runs (validation after steps 2 and 4), with and without gradient
    accumulation over 2 batches."""
    runs = {}
    for accumulate in (1, 2):
        run_dir = tmp_path_factory.mktemp(f"straight{accumulate}")
        extra = f"trainer.accumulate_grad_batches={accumulate}"
        train(config("trainer.max_steps=4", *RESUME, extra), run_dir)
        runs[accumulate] = run_dir
    return runs


@pytest.mark.parametrize(("stop", "accumulate"), [(1, 1), (3, 1), (3, 2)])
def test_resume_continues_exactly(tmp_path, straight_runs, stop, accumulate):
    """Stopping after ``stop`` steps (mid-epoch, at a validation, after a validation) and
    resuming with ``resume=true`` logs the same losses and ends with the same weights as the
    uninterrupted run: weights, optimiser and schedule state, data position and prompt
    sampling all continue."""
    extra = [*RESUME, f"trainer.accumulate_grad_batches={accumulate}"]
    train(config(f"trainer.max_steps={stop}", *extra), tmp_path)
    stopped = final_weights(tmp_path)
    train(config("trainer.max_steps=4", "resume=true", *extra), tmp_path)
    straight = straight_runs[accumulate]
    expected, actual = logged_losses(straight), logged_losses(tmp_path)
    assert len(expected) == 4 and actual == expected
    (log,) = (tmp_path / "csv").glob("*/metrics.csv")  # one log, continued when resumed
    with log.open() as file:
        rows = list(csv.DictReader(file))
    for name in ("train/loss", "val/miou_1pt"):  # each step's value once
        steps = [row["step"] for row in rows if row.get(name)]
        assert len(steps) == len(set(steps)), (name, steps)
    assert_same_weights(final_weights(straight), final_weights(tmp_path))
    name = "model.mask_decoder.iou_token.weight"
    assert not torch.equal(stopped[name], final_weights(tmp_path)[name]), "resumed steps train"


def test_resume_from_a_checkpoint_written_at_validation(tmp_path, straight_runs):
    """A crash after step 3 leaves the checkpoint of the validation at step 2: continuing
    from it with ``ckpt_path`` repeats steps 3 and 4 exactly."""
    straight = straight_runs[1]
    (best,) = (straight / "checkpoints").glob("best-step=*.ckpt")
    state = torch.load(best, weights_only=True)
    assert state["global_step"] in (2, 4)
    copied = tmp_path / "at_validation.ckpt"
    copied.write_bytes(best.read_bytes())
    train(config("trainer.max_steps=4", *RESUME, f"ckpt_path={copied}"), tmp_path / "run")
    assert_same_weights(final_weights(straight), final_weights(tmp_path / "run"))
    resumed = logged_losses(tmp_path / "run")
    expected = logged_losses(straight)
    assert resumed == {step: v for step, v in expected.items() if step >= state["global_step"]}


def test_last_checkpoint_is_the_latest_step(tmp_path):
    """``last.ckpt`` follows every validation and the end of training, also when a
    validation is not the best (Lightning's own ``save_last`` would leave it behind)."""
    train(config("trainer.max_steps=3", "trainer.val_check_interval=1"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3 and state["sam_lightning_batches_seen"] == 3
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # no leftover temporary file


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
    big[0, 100:701, 200:401] = True  # a tall plateau of depth 101 (rows 200 to 600)
    # ties go to the first pixel in raster order: the top of the tall plateau
    assert interior_points(big)[0].tolist() == [300, 200]
