"""Encoder distillation (``distill.*``): the loss falls, the teacher cache returns the
teacher's embeddings, the student/teacher metric, exact resume, the export, the checks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_entry import assert_same_weights, config, final_weights

from sam_lightning.data.datamodule import SamDataModule
from sam_lightning.export import export_checkpoint
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import save_checkpoint
from sam_lightning.settings.train import check
from sam_lightning.train import train
from sam_lightning.training.distill_validation import (
    distill_prompts,
    grid_prompts,
    student_teacher_ious,
)
from sam_lightning.training.distillation import DistillationModule, stage_one_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from sam_test_models import randomize_  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: bitwise comparisons


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher_nano.pth"
    save_checkpoint(randomize_(build_sam("vit_nano", image_size=64), seed=3), path)
    return path


def distill_config(teacher_file, *overrides: str) -> dict:
    return config(
        "model.type=vit_pico",
        "+distill.teacher_type=vit_nano",
        f"+distill.teacher_checkpoint={teacher_file}",
        *overrides,
    )


def a_batch(size: int = 64, images: int = 2) -> dict:
    data = SamDataModule(
        {"kind": "synthetic", "num_images": images, "image_size": size},
        image_size=size,
        batch_size=images,
        max_masks=3,
    )
    return next(iter(data.train_loader()))


def test_the_loss_falls_on_a_fixed_batch(teacher_file):
    module = DistillationModule("vit_pico", "vit_nano", str(teacher_file), image_size=64)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    batch, losses = a_batch(), []
    for _ in range(30):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    # Only the student encoder trains; the teacher's parts get no gradient.
    trained = {n.split(".")[1] for n, p in module.named_parameters() if p.requires_grad}
    assert trained == {"image_encoder"}
    assert all(p.grad is None for p in module.model.mask_decoder.parameters())


def test_a_teacher_cache_entry_equals_a_fresh_teacher_embedding(teacher_file, tmp_path):
    module = DistillationModule(
        "vit_pico", "vit_nano", str(teacher_file), image_size=64, teacher_cache=str(tmp_path)
    )
    batch = a_batch()
    filled = module.teacher_embeddings(batch)
    read = module.teacher_embeddings(batch)
    assert module.teacher_cache.misses == 2 and module.teacher_cache.hits == 2
    teacher = build_sam("vit_nano", checkpoint=teacher_file, image_size=64)
    with torch.no_grad():
        fresh = teacher.encode_images(
            [im[:, :h, :w] for im, (h, w) in zip(batch["images"], batch["input_size"].tolist())]
        )
    assert torch.equal(filled, fresh) and torch.equal(read, fresh)


def test_student_equal_to_teacher_scores_one_and_a_noisy_one_less(teacher_file):
    teacher = build_sam("vit_nano", checkpoint=teacher_file, image_size=64)
    batch = a_batch()
    with torch.no_grad():
        embeddings = teacher.encode_images(list(batch["images"]))
    size = batch["images"].shape[-2:]
    prompts = distill_prompts(teacher, batch, embeddings, grid=3)
    same = student_teacher_ious(teacher, embeddings, embeddings, prompts, size)
    assert set(same) == {"1pt", "box"} and all(bool((v == 1).all()) for v in same.values())
    noisy = embeddings + 3 * torch.randn_like(embeddings)
    worse = student_teacher_ious(teacher, noisy, embeddings, prompts, size)
    assert float(torch.cat(list(worse.values())).mean()) < 1


def test_grid_prompts_lie_in_each_image():
    points, index = grid_prompts(torch.tensor([[64, 32], [20, 64]]), grid=4)
    assert points.shape == (32, 2) and index.tolist() == [0] * 16 + [1] * 16
    assert points[:16, 0].max() < 32 and points[16:, 1].max() < 20
    assert points[:4, 0].tolist() == [4, 12, 20, 28] and points[0, 1] == 8


def test_a_plain_folder_trains_and_validates_on_the_grid(teacher_file, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
    spec = "{kind: images, root: " + str(folder) + "}"
    metrics = train(
        distill_config(
            teacher_file,
            "~data.train",
            "~data.val",
            f"+data.train={spec}",
            f"+data.val={spec}",
            "trainer.max_steps=2",
        ),
        tmp_path / "run",
    )
    assert 0 <= metrics["val/student_teacher_miou"] <= 1 and metrics["val/embedding_mse"] > 0
    assert "val/miou_1pt" not in metrics  # no masks, no ground truth


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, teacher_file):
    run_dir = tmp_path_factory.mktemp("distill_straight")
    train(
        distill_config(teacher_file, "trainer.max_steps=4", "checkpoint.every_n_steps=0"), run_dir
    )
    return run_dir


def test_checkpoints_hold_the_student_and_resume_exactly(straight_run, teacher_file, tmp_path):
    state = final_weights(straight_run)
    assert state and all(key.startswith("model.image_encoder.") for key in state)
    stopped = distill_config(teacher_file, "trainer.max_steps=2", "checkpoint.every_n_steps=0")
    train(stopped, tmp_path)
    resumed = distill_config(
        teacher_file, "trainer.max_steps=4", "checkpoint.every_n_steps=0", "resume=must"
    )
    train(resumed, tmp_path)
    assert_same_weights(state, final_weights(tmp_path))


def test_export_is_the_student_with_the_teachers_decoder(straight_run, teacher_file, tmp_path):
    out = export_checkpoint(straight_run / "checkpoints" / "last.ckpt", tmp_path / "s.pth")
    student = build_sam("vit_pico", checkpoint=out, image_size=64)  # strict
    teacher = build_sam("vit_nano", checkpoint=teacher_file, image_size=64)
    exported, trained = student.state_dict(), final_weights(straight_run)
    for key, value in teacher.state_dict().items():
        if not key.startswith("image_encoder."):
            assert torch.equal(exported[key], value), key
    for key, value in trained.items():
        assert torch.equal(exported[key.removeprefix("model.")], value), key


def test_resume_on_another_teacher_is_refused(straight_run, tmp_path):
    other = tmp_path / "other_teacher.pth"
    save_checkpoint(randomize_(build_sam("vit_nano", image_size=64), seed=9), other)
    ckpt = straight_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="distill.teacher_checkpoint"):
        train(distill_config(other, "trainer.max_steps=5", f"ckpt_path={ckpt}"), tmp_path)


def test_a_student_of_another_embedding_shape_is_refused(teacher_file):
    with pytest.raises(ValueError, match="teacher's shape"):
        DistillationModule("vit_tiny", "vit_nano", str(teacher_file), image_size=64)


def test_settings_that_distillation_does_not_use_are_refused(teacher_file):
    problems = check(distill_config(teacher_file, "training.frozen=[image_encoder]"))
    assert any("training.frozen" in p for p in problems)
    assert check(distill_config(teacher_file)) == []


@pytest.mark.parametrize(
    "overrides",
    [
        ["+exp=distill_vit_t", "distill.teacher_checkpoint=t.pth", "data.train.root=a"],
        ["+exp=distill_demo", "teacher=demo.pth"],
    ],
)
def test_the_distillation_experiments_compose_and_pass_the_checks(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sam_lightning.entry_points import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=overrides), resolve=True)
    assert check(cfg) == []
    assert cfg["distill"]["teacher_checkpoint"] in ("t.pth", "demo.pth")
    student = build_sam(cfg["model"]["type"], image_size=cfg["model"]["image_size"])
    teacher = build_sam(cfg["distill"]["teacher_type"], image_size=cfg["model"]["image_size"])
    stage_one_model(student, teacher)  # raises when the embeddings differ in shape
