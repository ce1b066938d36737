"""Zero-shot instance segmentation (SAM paper §7.4, App. D.4): detector boxes prompt SAM.

The boxes of a detector (e.g. ViTDet-H), given as a COCO results JSON, prompt the model one
image at a time, all of its boxes in one batch. Then one refinement pass feeds the most
confident predicted mask (its low-resolution logits) back to the decoder together with the
box, and that pass's single mask is the prediction. Each mask keeps its box's score and
category. Metrics: COCO mask AP (:func:`~sam_lightning.evaluation.coco_metrics.mask_ap`:
COCOeval's numbers, bit for bit, from our native back-end) or LVIS mask AP (``lvis``,
:func:`~sam_lightning.evaluation.lvis_compat.lvis_mask_ap`).

Every image of the ground truth is segmented (an image without objects still has the
detector's false positives, which COCO AP counts); detections of images not in the ground
truth are left out.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sam_lightning.evaluation import coco_metrics, lvis_compat
from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.file_io import write_atomic
from sam_lightning.inference.packed_rles import PackedRLEs
from sam_lightning.inference.predictor import SamPredictor

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: ``eval`` settings and their defaults (App. D.4; see conf/eval/instances_coco.yaml).
PREDICTIONS_FILE = "predictions.json"


def load_detections(
    path: str | Path, image_ids: Iterable[int]
) -> dict[int, list[Mapping[str, Any]]]:
    """The detections of a COCO results JSON (``image_id``, ``category_id``, ``bbox`` XYWH,
    ``score``) by image, for the images in ``image_ids``; others are counted and logged."""
    with open(path, "rb") as handle:
        detections = json.load(handle)
    if not isinstance(detections, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of detections")
    wanted = set(image_ids)
    by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for k, detection in enumerate(detections):
        for field in ("image_id", "category_id", "bbox", "score"):
            if field not in detection:
                raise ValueError(f"{path}: detection {k} has no '{field}'")
        if len(detection["bbox"]) != 4:
            raise ValueError(f"{path}: detection {k}'s bbox is not [x, y, w, h]")
        if detection["image_id"] in wanted:
            by_image[detection["image_id"]].append(detection)
    skipped = len(detections) - sum(map(len, by_image.values()))
    if skipped:
        log.warning("%s: %d detections are of images not evaluated; left out", path, skipped)
    return by_image


@torch.inference_mode()
def segment_boxes(
    predictor: SamPredictor,
    boxes_xyxy: np.ndarray,
    multimask_output: bool = True,
    refine: bool = True,
    boxes_per_batch: int = 64,
) -> PackedRLEs:
    """Masks of ``N x 4`` XYXY boxes (pixels of the image set on ``predictor``), in
    batches: the decoder's most confident mask for each box, and, with ``refine``, the
    single mask of a second pass given that mask's low-resolution logits and the box."""
    height, width = predictor.original_size
    parts = [PackedRLEs.empty(height, width)]
    for start in range(0, len(boxes_xyxy), boxes_per_batch):
        chunk = boxes_xyxy[start : start + boxes_per_batch]
        boxes = torch.as_tensor(
            predictor.transform.apply_boxes(chunk, (height, width)),
            dtype=torch.float,
            device=predictor.device,
        )
        rows = torch.arange(len(boxes), device=boxes.device)
        if refine:  # the first pass needs no full-size masks
            low_res, scores = predictor.model.decode(
                predictor.features, boxes=boxes, multimask_output=multimask_output
            )
            chosen = low_res[rows, scores.argmax(1)][:, None]
            masks, _, _ = predictor.predict_torch(
                None, None, boxes=boxes, mask_input=chosen, multimask_output=False
            )
            masks = masks[:, 0]
        else:
            masks, scores, _ = predictor.predict_torch(
                None, None, boxes=boxes, multimask_output=multimask_output
            )
            masks = masks[rows, scores.argmax(1)]
        parts.append(PackedRLEs.encode(masks))
    return PackedRLEs.cat(parts, height, width)


def xywh_to_xyxy(detections: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``N x 4`` XYXY float boxes of COCO detections (``bbox`` XYWH)."""
    boxes = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def segment_detections(
    predictor: SamPredictor,
    images: Iterable[tuple[Mapping[str, Any], np.ndarray]],
    detections: Mapping[int, Sequence[Mapping[str, Any]]],
    multimask_output: bool = True,
    refine: bool = True,
    boxes_per_batch: int = 64,
) -> list[dict[str, Any]]:
    """COCO mask results (``segmentation`` as compressed RLE, the detection's ``score`` and
    ``category_id``) for every detection of every ``(image info, image)`` pair."""
    results: list[dict[str, Any]] = []
    for info, image in images:
        boxes = detections.get(info["id"], [])
        if not boxes:
            continue
        predictor.set_image(image)
        rles = segment_boxes(
            predictor, xywh_to_xyxy(boxes), multimask_output, refine, boxes_per_batch
        )
        size = [rles.height, rles.width]
        results += [
            {
                "image_id": info["id"],
                "category_id": detection["category_id"],
                "segmentation": {"size": size, "counts": counts},
                "score": detection["score"],
            }
            for detection, counts in zip(boxes, rles.counts_strings())
        ]
    predictor.reset_image()
    return results


def run_from_config(job: EvalJob) -> dict[str, float] | None:
    """Runs App. D.4 on ``data.images`` / ``data.annotations`` (COCO or LVIS v1;
    ``data.format`` ``auto``, ``coco`` or ``lvis``) with the boxes of ``data.detections``,
    writes ``output_dir/predictions.json`` (COCO results) and returns ``ap``, ``ap50``,
    ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large`` (COCO: COCOeval's, see ``backend``;
    LVIS: ``lvis``, plus ``ap_rare``, ``ap_common``, ``ap_frequent``). ``job.eval`` holds
    the task's settings (:class:`~sam_lightning.settings.evaluate.InstancesSettings`;
    ``max_images``: the first n images only). The images run through ``job.map_items``;
    ranks other than 0 return None."""
    settings = job.settings("instances_coco")
    document = coco_metrics.load_ground_truth(job.data["annotations"])
    fmt = coco_metrics.resolve_format(job.data.get("format"), document)
    files = coco_metrics.image_files(document, job.data["images"])[: settings["max_images"]]
    image_ids = [info["id"] for info, _ in files]
    detections = load_detections(job.data["detections"], image_ids)
    files = [(info, path) for info, path in files if detections.get(info["id"])]
    coco_metrics.check_image_files(files)
    predictor = SamPredictor(job.get_model())

    def compute(index: int, loaded: tuple[Mapping[str, Any], np.ndarray]) -> list[Any]:
        return segment_detections(
            predictor,
            [loaded],
            detections,
            multimask_output=bool(settings["multimask_output"]),
            refine=bool(settings["refine"]),
            boxes_per_batch=int(settings["boxes_per_batch"]),
        )

    per_image = job.map_items(settings)(
        len(files), compute, functools.partial(coco_metrics.read_file, files), "instances"
    )
    if per_image is None:  # not rank 0
        return None
    results = [record for records in per_image for record in records]
    write_atomic(Path(job.output_dir) / PREDICTIONS_FILE, json.dumps(results).encode())
    if fmt == "lvis":
        return lvis_compat.lvis_mask_ap(job.data["annotations"], results, image_ids=image_ids)
    return coco_metrics.mask_ap(document, results, image_ids=image_ids, backend=settings["backend"])
