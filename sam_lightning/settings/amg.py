"""The settings of ``python -m sam_lightning.amg`` (``conf/amg.yaml``): the data engine's
fully automatic stage. :class:`GeneratorSettings` are the arguments of
:class:`~sam_lightning.inference.automatic.SamAutomaticMaskGenerator` (the official
defaults; ``amg=sa1b`` selects the paper's SA-1B settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sam_lightning.settings.launch import LaunchSettings, launch_problems
from sam_lightning.settings.model import ModelSettings
from sam_lightning.settings.schema import check_settings


@dataclass
class GeneratorSettings:
    """``amg``: the automatic mask generator's parameters (``output_mode`` is always
    ``coco_rle`` for the data engine)."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: list[list[list[float]]] | None = None  # N x 2 grids in [0, 1] per layer
    min_mask_region_area: int = 0
    max_mask_area_fraction: float | None = None


@dataclass(kw_only=True)
class AmgSettings(LaunchSettings):
    """The whole ``conf/amg.yaml`` (with the launch keys of ``conf/launch/default.yaml``)."""

    input: str
    output: str
    model: ModelSettings
    amg: GeneratorSettings = field(default_factory=GeneratorSettings)
    recursive: bool = False
    images_per_batch: int = 2  # images embedded by one encoder call (1: bit-exact per image)
    # images with more pixels are skipped and listed as failed (Pillow's default; None: no limit)
    max_image_pixels: int | None = 89_478_485
    device: str = "auto"
    progress: bool = True


def check(config: Mapping[str, Any]) -> list[str]:
    """The problems of a composed ``conf/amg.yaml``."""
    problems = check_settings(config, AmgSettings)
    if problems:
        return problems
    return launch_problems(
        config,
        images_per_batch="images per encoder call",
        max_image_pixels="pixels per image, or null for no limit",
    )
