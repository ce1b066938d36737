"""The settings of ``python -m sam_lightning.evaluate`` (``conf/evaluate.yaml``) and of each
zero-shot harness (App. D): the ``eval`` block and the ``data`` block of
``conf/eval/<task>.yaml``. The defaults are the paper's settings; the YAML files repeat
them with the paper's words (a test checks that they agree)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from sam_lightning.settings.launch import LaunchSettings, launch_problems
from sam_lightning.settings.model import TextModelSettings
from sam_lightning.settings.schema import OneOf, check_settings

#: App. D.1: mIoU after N = 1, 2, 3, 5 and 9 points.
PAPER_NUM_CLICKS = (1, 2, 3, 5, 9)
BACKEND = Literal["auto", "native", "pycocotools", "faster_coco_eval"]


@dataclass
class PointsSettings:
    """App. D.1: mIoU after N point prompts (RITM's click protocol)."""

    num_clicks: list[int] = field(default_factory=lambda: list(PAPER_NUM_CLICKS))
    objects_per_batch: int = 64  # objects decoded together (memory and speed only)
    max_images: int | None = None  # only the first n images (None: all)


@dataclass
class EdgesSettings:
    """App. D.2: edge maps from a 16 x 16 point grid, NMS, the BSDS benchmark."""

    points_per_side: int = 16
    box_nms_thresh: float = 0.7
    nms_radius: int = 1  # the edges toolbox's edge NMS (edgesDetect)
    nms_border: int = 5
    nms_multiplier: float = 1.01
    orientation_smoothing: int = 4
    points_per_batch: int = 64
    thresholds: int = 99  # the BSDS benchmark: 99 thresholds,
    max_dist: float = 0.0075  # matching within 0.0075 x the image diagonal
    edges_from: str | None = None  # a directory of <name>.png edge maps instead of SAM's
    max_images: int | None = None


@dataclass
class ProposalsSettings:
    """App. D.3: the automatic generator's proposals, AR@1000."""

    points_per_side: int = 64
    nms_thresh: float = 0.9
    max_proposals: int = 1000
    points_per_batch: int = 64
    stability_score_offset: float = 1.0
    max_images: int | None = None
    backend: Literal["auto", "pycocotools"] = "auto"


@dataclass
class InstancesSettings:
    """App. D.4: masks from detector boxes, with one refinement pass, COCO/LVIS AP."""

    multimask_output: bool = True
    refine: bool = True
    boxes_per_batch: int = 64
    max_images: int | None = None
    backend: BACKEND = "auto"


@dataclass
class ClipSettings:
    """The CLIP of text prompts: a local HuggingFace-layout directory (required)."""

    path: str | None = None


@dataclass
class TextCocoSettings:
    """App. D.5 on COCO/LVIS category names."""

    clip: ClipSettings = field(default_factory=ClipSettings)
    prompt_template: str = "{}"
    include_crowd: bool = True
    skip_not_exhaustive: bool = True
    queries_per_batch: int = 64
    max_images: int | None = None


@dataclass
class TextRefcocoSettings:
    """App. D.5 on RefCOCO/+/g referring expressions."""

    clip: ClipSettings = field(default_factory=ClipSettings)
    queries_per_batch: int = 64
    max_images: int | None = None


@dataclass
class CocoData:
    """``data`` of a task on a COCO-format or LVIS instances file."""

    images: str
    annotations: str
    format: Literal["auto", "coco", "lvis"] = "coco"


@dataclass
class DetectionsData:
    """``data`` of the instance task: a COCO/LVIS file and the detector's boxes (COCO
    results JSON)."""

    images: str
    annotations: str
    detections: str
    format: Literal["auto", "coco", "lvis"] = "coco"


@dataclass
class BsdsData:
    """``data`` of the edge task: the BSDS500 directory."""

    root: str
    split: Literal["train", "val", "test"] = "test"


@dataclass
class RefcocoData:
    """``data`` of the RefCOCO task: the refer toolkit's directory, or the three paths."""

    root: str | None = None
    dataset: Literal["refcoco", "refcoco+", "refcocog"] = "refcoco"
    split_by: Literal["unc", "umd", "google"] | None = None
    split: str = "val"
    refs: str | None = None
    instances: str | None = None
    images: str | None = None


#: ``eval.task`` -> (the ``eval`` settings, the ``data`` settings).
TASKS: dict[str, tuple[type, type]] = {
    "points_coco": (PointsSettings, CocoData),
    "points_lvis": (PointsSettings, CocoData),
    "edges_bsds": (EdgesSettings, BsdsData),
    "proposals_lvis": (ProposalsSettings, CocoData),
    "instances_coco": (InstancesSettings, DetectionsData),
    "instances_lvis": (InstancesSettings, DetectionsData),
    "text_coco": (TextCocoSettings, CocoData),
    "text_refcoco": (TextRefcocoSettings, RefcocoData),
}


@dataclass
class EvaluateLoggerSettings:
    """``logger``: one W&B run per job (offline unless ``mode`` or ``WANDB_MODE`` says)."""

    kind: Literal["wandb", "none"] = "wandb"
    mode: Literal["online", "offline", "disabled"] | None = None
    project: str = "sam_lightning"
    group: str | None = None
    name: str | None = None


@dataclass(kw_only=True)
class EvaluateSettings(LaunchSettings):
    """The whole ``conf/evaluate.yaml`` with its task (and the launch keys of
    ``conf/launch/default.yaml``)."""

    model: TextModelSettings
    eval: Annotated[dict, OneOf("task", {task: eval for task, (eval, _) in TASKS.items()})]
    data: dict[str, Any] = field(default_factory=dict)  # checked against the task's
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    logger: EvaluateLoggerSettings = field(default_factory=EvaluateLoggerSettings)
    sweep_name: str = ""
    run_name: str = ""  # the run directory outputs/evaluate/<task>/<run_name>
    resume: bool = False  # continue the unfinished run in the run directory
    commit_every: int = 16  # images per committed chunk of predictions, per rank


def check(config: Mapping[str, Any]) -> list[str]:
    """The problems of a composed evaluation config (its ``data`` checked against the
    task's declaration)."""
    problems = check_settings(config, EvaluateSettings)
    if problems:
        return problems
    problems = launch_problems(config, commit_every="images per chunk")
    eval_cfg = config.get("eval")
    task = eval_cfg.get("task") if isinstance(eval_cfg, Mapping) else None
    if task in TASKS:
        problems += check_settings(config.get("data", {}), TASKS[task][1], "data")
    return problems
