"""The settings of ``python -m sam_lightning.train`` (``conf/train.yaml`` and its groups).

Defaults are the paper's (App. A) where it gives one. :class:`TrainingSettings` and
:class:`OptimSettings` are the keyword arguments of
:class:`~sam_lightning.training.module.SamTrainingModule`, :class:`DataSettings` those of
:class:`~sam_lightning.data.datamodule.SamDataModule`, and the dataset specs those of the
dataset classes (the tests compare their defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from sam_lightning.settings.model import MODEL_TYPES, ModelSettings
from sam_lightning.settings.schema import OneOf, check_settings

PART = Literal["image_encoder", "prompt_encoder", "mask_decoder"]


@dataclass
class SyntheticSpec:
    """``kind: synthetic``: :class:`~sam_lightning.data.synthetic.SyntheticShapes`."""

    num_images: int
    image_size: int | list[int] = 256
    min_shapes: int = 3
    max_shapes: int = 8
    seed: int = 0
    min_area: int = 16
    background: Literal["texture", "cells"] = "texture"
    min_cells: int = 3
    max_cells: int = 6
    textures: list[Literal["stripes", "gradient", "checker", "noise"]] = field(
        default_factory=lambda: ["stripes", "gradient", "checker", "noise"]
    )


@dataclass
class SA1BSpec:
    """``kind: sa1b``: :class:`~sam_lightning.data.sa1b_dataset.SA1BDataset`."""

    roots: str | list[str]
    image_root: str | None = None
    recursive: bool = False


@dataclass
class CocoSpec:
    """``kind: coco`` or ``lvis``: :class:`~sam_lightning.data.coco.CocoDataset`."""

    annotations: str
    images: str
    skip_crowd: bool = True
    min_area: float = 0.0
    category_ids: list[int] | None = None


@dataclass
class ImagesSpec:
    """``kind: images``: :class:`~sam_lightning.data.image_folder.ImageFolderDataset`, a
    plain folder of images without annotations (distillation)."""

    root: str
    recursive: bool = False


#: Dataset kinds and their declarations (``data.train.kind``, ``data.val.kind``).
DATASET_SPECS: dict[str, type] = {
    "synthetic": SyntheticSpec,
    "sa1b": SA1BSpec,
    "coco": CocoSpec,
    "lvis": CocoSpec,
    "images": ImagesSpec,
}
#: A dataset spec; a ``val`` spec without a ``kind`` takes the ``train`` spec's kind and
#: settings, overriding those it gives (see ``SamDataModule``).
DatasetSpec = Annotated[dict, OneOf("kind", DATASET_SPECS)]


@dataclass
class DataSettings:
    """``data``: the two dataset specs and how samples are drawn from them."""

    train: DatasetSpec | None = None
    val: DatasetSpec | None = None
    max_masks: int = 64  # App. A: up to 64 masks per GPU
    max_mask_fraction: float = 0.9  # App. A: masks covering > 90% of the image are dropped
    lsj: bool = False  # large-scale jitter
    scale_range: list[float] = field(default_factory=lambda: [0.1, 2.0])
    batch_size: int = 2
    num_workers: int = 0
    pin_memory: bool = False


@dataclass
class TextSettings:
    """``training.text``: CLIP prompts (App. D.5); ``clip_path`` or ``clip_tiny`` is needed."""

    clip_path: str | None = None  # CLIP directory in the HuggingFace layout (ViT-L/14@336px)
    clip_tiny: dict[str, Any] | None = None  # or tiny_clip_config(**clip_tiny), random weights
    clip_seed: int = 0  # the random tiny CLIP's seed
    min_mask_area: int = 100**2  # masks of at least this many original-image pixels
    probability: float = 1.0  # share of those whose first prompt is their CLIP embedding
    expand_range: list[float] = field(default_factory=lambda: [1.0, 2.0])
    zero_outside_probability: float = 0.5  # chance that the crop's pixels outside are 0


@dataclass
class TrainingSettings:
    """``training``: the simulated interactive session (§3, App. A), what is trained, and
    validation."""

    num_point_rounds: int = 8  # corrective clicks; + first prompt + 2 rounds without = 11
    box_probability: float = 0.5  # first prompt: a box or a point with equal probability
    focal_weight: float = 20.0  # loss = 20 focal + 1 dice on the best of the masks (§3)
    dice_weight: float = 1.0
    iou_weight: float = 1.0  # MSE of the IoU prediction
    val_clicks: int = 5  # val/miou_1pt, val/miou_box and val/miou_<k>clicks up to this
    val_images: int = 4  # validation images logged with their masks (W&B only)
    frozen: list[PART] = field(default_factory=list)
    drop_path_rate: float = 0.0  # stochastic depth of the last encoder block (App. A: 0.4)
    activation_checkpointing: bool = False  # recompute encoder blocks in backward
    text: TextSettings | None = None
    embedding_cache: str | None = None  # directory of cached image embeddings (frozen encoder)
    embedding_cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass
class OptimSettings:
    """``optim``: App. A "Training algorithm": AdamW, warm-up, step decay, layer decay."""

    lr: float = 8e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float = 0.8
    warmup_steps: int = 250
    milestones: list[int] = field(default_factory=lambda: [60000, 86666])
    decay_factor: float = 0.1


@dataclass
class DistillSettings:
    """``distill``: encoder distillation (MobileSAM's decoupled distillation): ``model`` is
    the student, trained on the image embeddings of this teacher; see
    :class:`~sam_lightning.training.distillation.DistillationModule`."""

    teacher_type: Annotated[str, MODEL_TYPES]
    teacher_checkpoint: str
    teacher_cache: str | None = None  # directory of cached teacher embeddings
    teacher_cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    val_grid: int = 4  # validation points per side on images without masks


@dataclass
class TrainerSettings:
    """``trainer``: arguments of ``lightning.Trainer`` (those a run may set; a test checks
    that each is one). ``strategy`` may also be ``{name: fsdp, ...}``."""

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str | dict[str, Any] = "auto"
    precision: str | int = "32-true"
    max_steps: int = 90000  # App. A
    max_epochs: int | None = None
    min_steps: int | None = None
    max_time: str | None = None
    val_check_interval: int | float | None = 1000
    check_val_every_n_epoch: int | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float = 1.0
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int = 50
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    accumulate_grad_batches: int = 1
    deterministic: bool | Literal["warn"] = False
    benchmark: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    fast_dev_run: bool | int = False
    overfit_batches: int | float = 0.0
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    profiler: str | None = None


@dataclass
class TrainLoggerSettings:
    """``logger``: CSV files, or Weights & Biases (``WANDB_MODE`` is honoured)."""

    kind: Literal["csv", "wandb"] = "csv"
    project: str = "sam_lightning"
    group: str | None = None
    name: str | None = None


@dataclass
class CheckpointSettings:
    """``checkpoint``: ``last.ckpt`` also every this many optimiser steps (0: only after
    validations and at the end)."""

    every_n_steps: int = 1000


@dataclass
class TrainSettings:
    """The whole ``conf/train.yaml``."""

    model: ModelSettings
    data: DataSettings = field(default_factory=DataSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    logger: TrainLoggerSettings = field(default_factory=TrainLoggerSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    run_name: str = "default"
    seed: int = 0
    # false: start from scratch; true: continue from <run dir>/checkpoints/last.ckpt when
    # it exists (else start from scratch, with a warning); must: refuse to start without it
    resume: bool | Literal["must"] = False
    ckpt_path: str | None = None
    # validate the starting weights first (metrics.json: before/val/...), e.g. a base to adapt
    validate_before: bool = False
    base: str | None = None  # the weights an experiment adapts (demo_adapt: model.checkpoint)
    distill: DistillSettings | None = None  # distil the encoder of distill.teacher_* into model
    teacher: str | None = None  # the teacher an experiment distils (distill_demo)


#: ``training`` settings a distillation run has no use for, with their inactive values.
_NOT_FOR_DISTILLATION = {"frozen": [], "text": None, "embedding_cache": None}


def check(config: Mapping[str, Any]) -> list[str]:
    """The problems of a composed training config."""
    problems = check_settings(config, TrainSettings)
    if problems or not config.get("distill"):
        return problems
    training = config.get("training") or {}
    for name, inactive in _NOT_FOR_DISTILLATION.items():
        if training.get(name, inactive) != inactive:
            problems.append(
                f"training.{name}: not used by distillation (distill.*), which trains the "
                "whole student encoder on the teacher's embeddings; leave it unset"
            )
    if ((config.get("model") or {}).get("lora") or {}).get("rank"):
        problems.append("model.lora.rank: distillation trains the whole student encoder")
    return problems
