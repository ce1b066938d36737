"""Every experiment in conf/exp composes and trains a few steps on CPU (shrunk to vit_tiny at
64 px, with generated data and a checkpoint in the official layout; the demo keeps its own
vit_nano at 64 px and its synthetic data), and W&B offline logging writes a run directory
holding the metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from sam_lightning.data.synthetic import SyntheticShapes, write_sa1b
from sam_lightning.entry_points import config_dir, register_resolvers, unset_settings
from sam_lightning.export import export_checkpoint
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import save_checkpoint
from sam_lightning.settings.schema import defaults
from sam_lightning.settings.train import TextSettings
from sam_lightning.train import build_strategy, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from clip_test_models import save_tiny_clip  # noqa: E402

EXPERIMENTS = sorted(path.stem for path in (config_dir() / "exp").glob("*.yaml"))

SMALL_MODEL = ["model.type=vit_tiny", "model.image_size=64"]
SHRINK = [
    "training.activation_checkpointing=false",
    "data.batch_size=2",
    "data.max_masks=3",
    "data.num_workers=0",
    "training.num_point_rounds=1",
    "training.val_clicks=3",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_nodes=1",
    "trainer.strategy=auto",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def compose_experiment(name: str, *overrides: str) -> dict:
    register_resolvers()  # as the entry points do (sam_bf16_on_gpu)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"+exp={name}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def write_coco(directory: Path, seed: int) -> dict[str, str]:
    """A COCO-format instances file (compressed RLEs) of 4 synthetic 64 x 80 images."""
    dataset = SyntheticShapes(4, (64, 80), seed=seed)
    images, annotations = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        name = f"{index:04d}.png"
        Image.fromarray(item["image"]).save(directory / name)
        images.append({"id": index + 1, "file_name": name, "height": 64, "width": 80})
        for ann in item["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                }
            )
    path = directory / "instances.json"
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
    path.write_text(json.dumps(document))
    return {"annotations": str(path), "images": str(directory)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("assets")
    official = root / "sam_vit_tiny_official.pth"
    model = build_sam("vit_tiny", image_size=64)
    with torch.no_grad():  # distinguishable from a fresh random initialisation
        for parameter in model.parameters():
            parameter.add_(0.01)
    save_checkpoint(model, official, format="torch")
    paths = {"checkpoint": official, "state": model.state_dict()}
    paths["nano"] = root / "demo_nano.pth"  # what demo_adapt adapts: the demo's export
    save_checkpoint(build_sam("vit_nano", image_size=64), paths["nano"])
    paths["clip"] = str(save_tiny_clip(root / "clip"))
    for split, seed in (("train", 0), ("val", 1)):
        coco_dir, sa1b_dir = root / f"coco_{split}", root / f"sa1b_{split}"
        coco_dir.mkdir()
        paths[f"coco_{split}"] = write_coco(coco_dir, seed)
        write_sa1b(SyntheticShapes(4, (64, 80), seed=seed), sa1b_dir)
        paths[f"sa1b_{split}"] = str(sa1b_dir)
    return paths


def data_overrides(config: dict, assets: dict) -> list[str]:
    """Paths for the experiment's dataset kind (and its CLIP)."""
    overrides = []
    if (config["training"].get("text") or {}).get("clip_path") == "???":
        overrides.append(f"training.text.clip_path={assets['clip']}")
    for split in ("train", "val"):
        kind = config["data"][split].get("kind", config["data"]["train"]["kind"])
        if kind in ("coco", "lvis"):
            coco = assets[f"coco_{split}"]
            overrides += [f"data.{split}.{key}={value}" for key, value in coco.items()]
        elif kind == "sa1b":
            overrides.append(f"data.{split}.roots={assets[f'sa1b_{split}']}")
        elif kind == "images":  # a plain folder: the COCO images (no annotations read)
            overrides.append(f"data.{split}.root={assets[f'coco_{split}']['images']}")
    return overrides


DISTILL_SMALL = {  # the teacher: the demo's kind of model; the student: vit_pico
    "distill_vit_t": [
        "model.type=vit_pico",
        "model.image_size=64",
        "distill.teacher_type=vit_nano",
    ],
}


def test_every_experiment_is_a_delta_file():
    assert {"demo", "finetune_coco_vit_b", "finetune_sa1b_vit_h", "multinode"} <= set(EXPERIMENTS)
    assert {"finetune_frozen_encoder", "text_demo", "text_sa1b_vit_h"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        text = (config_dir() / "exp" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name


def test_paper_recipe_numbers():
    config = compose_experiment("finetune_sa1b_vit_h", "model.checkpoint=null")
    optim = config["optim"]
    assert optim["lr"] == 8e-4 and optim["weight_decay"] == 0.1 and optim["layer_decay"] == 0.8
    assert optim["milestones"] == [60000, 86666] and optim["warmup_steps"] == 250
    assert config["trainer"]["max_steps"] == 90000 and config["training"]["drop_path_rate"] == 0.4
    trainer = config["trainer"]
    assert trainer["num_nodes"] * trainer["devices"] * config["data"]["batch_size"] == 256
    assert config["data"]["max_masks"] == 64 and config["data"]["lsj"] is False


def test_text_recipe_numbers():
    """App. D.5 on top of the ViT-H recipe."""
    config = compose_experiment("text_sa1b_vit_h", "model.checkpoint=null")
    text = {**defaults(TextSettings), **config["training"]["text"]}  # declared defaults
    assert text["min_mask_area"] == 100**2 and text["expand_range"] == [1.0, 2.0]
    assert text["zero_outside_probability"] == 0.5 and text["probability"] == 1.0
    assert config["model"]["type"] == "vit_h" and config["optim"]["milestones"] == [60000, 86666]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_few_steps(name, assets, tmp_path):
    adapts = ["base=null"] if name == "demo_adapt" else []
    adapts += ["teacher=null"] if name == "distill_demo" else []
    adapts += ["distill.teacher_checkpoint=null"] if name == "distill_vit_t" else []
    config = compose_experiment(name, "model.checkpoint=null", *adapts)
    overrides = [*SHRINK, *data_overrides(config, assets)]
    if config.get("distill"):
        key = "teacher" if name == "distill_demo" else "distill.teacher_checkpoint"
        teacher = f"{key}={assets['nano']}"
        overrides += [*DISTILL_SMALL.get(name, []), teacher, "model.checkpoint=null"]
        overrides.append(f"distill.teacher_cache={tmp_path / 'teacher'}")
        metrics = train(compose_experiment(name, *overrides), tmp_path)
        assert metrics["step"] == 2 and 0.0 <= metrics["val/student_teacher_miou"] <= 1.0
        assert np.isfinite(metrics["train/embedding_mse"])
        assert list((tmp_path / "teacher").rglob("*.safetensors"))
        return
    if name == "demo_adapt":
        overrides.append(f"base={assets['nano']}")
    elif name != "demo":
        overrides += [*SMALL_MODEL, f"model.checkpoint={assets['checkpoint']}"]
    if config["training"].get("embedding_cache"):
        overrides.append(f"training.embedding_cache={tmp_path / 'embeddings'}")
    config = compose_experiment(name, *overrides)
    metrics = train(config, tmp_path)
    assert metrics["step"] == 2 and 0.0 <= metrics["val/miou_1pt"] <= 1.0
    assert np.isfinite(metrics["train/loss"])
    trained = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    if name == "demo_adapt":  # validated before training too, from the base
        assert config["model"]["checkpoint"] == str(assets["nano"])
        assert 0.0 <= metrics["before/val/miou_1pt"] <= 1.0 and metrics["fit_seconds"] > 0
        return
    if name == "demo":
        assert config["model"]["type"] == "vit_nano" and config["model"]["image_size"] == 64
        assert trained["model.image_encoder.patch_embed.proj.weight"].shape[-1] == 8
        return
    official = assets["state"]
    if config["model"]["lora"]["rank"]:  # only what trains: adapters and the decoder
        assert any(".lora_" in key for key in trained)
        assert not any(".base_layer." in key or "prompt_encoder." in key for key in trained)
        assert all(".lora_" in key for key in trained if key.startswith("model.image_encoder."))
        return
    if config["training"].get("embedding_cache"):
        # 2 steps of 2 training images, 1 validation batch of 2 images: each embedded once
        assert len(list((tmp_path / "embeddings").rglob("*.safetensors"))) == 6
    frozen_encoder = "image_encoder" in config["training"]["frozen"]
    # A frozen base stays out of the checkpoint; the export puts it back.
    assert any(key.startswith("model.image_encoder.") for key in trained) != frozen_encoder
    exported = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "model.pth")
    whole = torch.load(exported, weights_only=True)
    # Started from the checkpoint: a buffer that never trains still holds its values.
    name_pe = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    assert torch.equal(whole[name_pe], official[name_pe])
    encoder_unchanged = all(
        torch.equal(whole[key], value)
        for key, value in official.items()
        if key.startswith("image_encoder.")
    )
    assert encoder_unchanged == frozen_encoder


def test_fsdp_trainer_builds_an_fsdp_strategy():
    from lightning.pytorch.strategies import FSDPStrategy

    config = compose_experiment("finetune_sa1b_vit_h", "model.checkpoint=null", "trainer=fsdp")
    strategy = build_strategy(config["trainer"]["strategy"])
    assert isinstance(strategy, FSDPStrategy)
    assert config["trainer"]["precision"] == "bf16-mixed"
    with pytest.raises(ValueError, match="name: fsdp"):
        build_strategy({"name": "deepspeed"})


def test_wandb_offline_writes_a_run_with_the_metrics(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = compose_experiment("demo", *SHRINK, "logger=wandb", "run_name=wandb_test")
    train(config, tmp_path)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = run.glob("run-*.wandb")
    contents = log.read_bytes()
    for key in (b"val/miou_1pt", b"val/miou_3clicks", b"train/loss", b"wandb_test"):
        assert key in contents, key
    # The validation panels (ground truth | 1-point prediction) of the 2 images of the one
    # validation (not of the sanity check), as PNG files.
    panels = sorted(run.glob("files/media/images/val/examples_*.png"))
    assert len(panels) == 2
    with Image.open(panels[0]) as image:
        assert image.size[0] > image.size[1]  # two panels side by side
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 2


@pytest.mark.parametrize(
    "name",
    ["finetune_coco_vit_b", "finetune_frozen_encoder", "finetune_sa1b_vit_h", "text_sa1b_vit_h"],
)
def test_fine_tuning_experiments_require_a_checkpoint(name):
    """`???` cannot override the model group's `checkpoint: null`; the experiments use
    `${sam_required:...}` so that a forgotten model.checkpoint is an error, not random
    weights."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"+exp={name}"])
    assert "model.checkpoint" in unset_settings(cfg)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        given = compose("train", overrides=[f"+exp={name}", "model.checkpoint=null"])
    assert "model.checkpoint" not in unset_settings(given)


def test_the_command_names_every_unset_setting(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam_lightning.train",
            "+exp=finetune_coco_vit_b",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr  # Hydra's job logging prints to stdout
    assert result.returncode == 2, output[-2000:]
    for key in ("model.checkpoint", "data.train.annotations", "data.val.images"):
        assert f"{key}=..." in output
    assert not (tmp_path / "checkpoints").exists()  # nothing ran
