"""Confident masks for the semi-automatic stage (``mode=semi``, paper Sec. 4).

Before an image without an annotation file is shown, it is pre-filled with masks the model
is confident about, saved with ``source: "model"``; annotators keep, delete or add to them.
The paper found its confident masks with a box detector trained on stage-1 masks; here they
come from one of two sources (``semi.source``):

- ``generator``: :class:`SamAutomaticMaskGenerator` on the image with the thresholds of
  ``semi.generator`` (higher than the generator's defaults, so only confident masks stay);
- a directory of SA-1B JSON files, e.g. the output of ``python -m sam_lightning.amg``
  (``<dir>/<image stem>.json``), filtered by the same ``pred_iou_thresh`` and
  ``stability_score_thresh``.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sam_lightning.data.sa1b import SA1BFormatError, read_sa1b_json

if TYPE_CHECKING:
    from sam_lightning.annotate.store import ImageEntry
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.annotate")

#: The generator's fields kept on model masks (all checked by the SA-1B validation).
ENGINE_FIELDS = ("predicted_iou", "point_coords", "stability_score", "crop_box")


class MaskSource(Protocol):
    """Confident masks of one image: records with ``segmentation`` (COCO RLE, str counts)
    and the generator's ``predicted_iou``, ``point_coords``, ``stability_score``,
    ``crop_box``."""

    name: str

    def __call__(self, image: np.ndarray, entry: ImageEntry) -> list[dict[str, Any]]: ...


class GeneratorMasks:
    """Masks of :class:`SamAutomaticMaskGenerator` built on ``model`` with ``options``."""

    name = "generator"

    def __init__(self, model: Sam, **options: Any) -> None:
        from sam_lightning.inference.automatic import SamAutomaticMaskGenerator

        accepted = set(inspect.signature(SamAutomaticMaskGenerator).parameters) - {
            "model",
            "output_mode",
        }
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"unknown semi.generator options {unknown}; use {sorted(accepted)}")
        if options.get("point_grids") is not None:
            grids = options["point_grids"]
            options["point_grids"] = [np.asarray(g, dtype=np.float64) for g in grids]
        self.generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **options)

    def __call__(self, image: np.ndarray, entry: ImageEntry) -> list[dict[str, Any]]:
        return self.generator.generate(image)


class DirectoryMasks:
    """Masks of ``<directory>/<stem>.json`` (SA-1B layout) whose ``predicted_iou`` and
    ``stability_score``, where present, reach the thresholds."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        pred_iou_thresh: float = 0.0,
        stability_score_thresh: float = 0.0,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"semi.source: not a directory: {self.directory}")
        self.name = str(self.directory)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh

    def __call__(self, image: np.ndarray, entry: ImageEntry) -> list[dict[str, Any]]:
        path = self.directory / f"{entry.stem}.json"
        if not path.is_file():
            log.info("semi: no confident masks for %s (%s is missing)", entry.name, path)
            return []
        try:
            document = read_sa1b_json(path)
        except (OSError, SA1BFormatError) as error:
            log.error("semi: ignoring %s: %s", path, error)
            return []
        info = document["image"]
        if [info["height"], info["width"]] != list(image.shape[:2]):
            log.error(
                "semi: ignoring %s: it is for a %d x %d image, %s is %d x %d",
                path,
                info["width"],
                info["height"],
                entry.name,
                image.shape[1],
                image.shape[0],
            )
            return []
        return [
            {"segmentation": ann["segmentation"], **{k: ann[k] for k in ENGINE_FIELDS if k in ann}}
            for ann in document["annotations"]
            if ann.get("predicted_iou", 1.0) >= self.pred_iou_thresh
            and ann.get("stability_score", 1.0) >= self.stability_score_thresh
        ]


def build_mask_source(model: Sam, source: str, options: dict[str, Any]) -> MaskSource:
    """``source`` ``"generator"`` → :class:`GeneratorMasks` with ``options``; anything else
    is a directory → :class:`DirectoryMasks` with ``options``' two thresholds."""
    if source == "generator":
        return GeneratorMasks(model, **options)
    return DirectoryMasks(
        source,
        options.get("pred_iou_thresh", 0.0),
        options.get("stability_score_thresh", 0.0),
    )


def model_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``AnnotationStore.add`` records of confident masks: source ``"model"``, the
    generator's point as the prompt, untimed."""
    out = []
    for record in records:
        points = [[*point, 1] for point in record.get("point_coords", [])]
        out.append(
            {
                "segmentation": record["segmentation"],
                "source": "model",
                "prompts": {"points": points, "box": None},
                "seconds": None,
                **{k: record[k] for k in ENGINE_FIELDS if k in record},
            }
        )
    return out
