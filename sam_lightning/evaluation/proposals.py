"""Zero-shot object proposals (SAM paper §7.3, App. D.3): mask AR@1000, class-agnostic.

The proposals come from the automatic mask generator, modified as App. D.3 says: no image
crops, no filtering by predicted IoU or stability score, a 64x64 point grid and box NMS at
0.9 (the generator's NMS, which ranks by predicted IoU). The masks left are ranked by the
mean of their predicted IoU and stability score, which is also their score in the results,
and the top 1000 per image are kept. Per-mask values stay tensors and masks packed RLEs
(:class:`~sam_lightning.inference.packed_rles.PackedRLEs`) until the result records are
written.

AR is COCOeval's with ``useCats=0`` and ``maxDets=[100, 300, 1000]``
(:func:`~sam_lightning.evaluation.coco_metrics.proposal_ar`), for all objects and per size,
and for LVIS per frequency group against the ground truth restricted to its categories.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sam_lightning.evaluation import coco_metrics
from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.file_io import write_atomic
from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
from sam_lightning.inference.mask_candidates import MaskCandidates
from sam_lightning.inference.packed_rles import PackedRLEs

if TYPE_CHECKING:
    from sam_lightning.modeling.sam import Sam

#: ``eval`` settings and their defaults (App. D.3; see conf/eval/proposals_lvis.yaml).
PREDICTIONS_FILE = "predictions.json"


def proposal_generator(
    model: Sam,
    points_per_side: int = 64,
    nms_thresh: float = 0.9,
    points_per_batch: int = 64,
    stability_score_offset: float = 1.0,
) -> SamAutomaticMaskGenerator:
    """The automatic mask generator as App. D.3 runs it: no crops, no IoU or stability
    filtering, box NMS at ``nms_thresh``, no small-region removal."""
    return SamAutomaticMaskGenerator(
        model,
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        stability_score_offset=stability_score_offset,
        box_nms_thresh=nms_thresh,
        crop_n_layers=0,
        min_mask_region_area=0,
        output_mode="coco_rle",
    )


def rank(masks: MaskCandidates, max_proposals: int = 1000) -> tuple[PackedRLEs, torch.Tensor]:
    """The generator's masks ranked by the mean of predicted IoU and stability score, best
    first (ties in the generator's order), at most ``max_proposals``: masks and scores."""
    scores = (masks.iou_preds.float() + masks.stability_score.float()) / 2
    order = torch.argsort(scores, descending=True, stable=True)[:max_proposals]
    return masks.rles.select(order), scores[order]


def propose(
    generator: SamAutomaticMaskGenerator, image: np.ndarray, max_proposals: int = 1000
) -> tuple[PackedRLEs, torch.Tensor]:
    """The proposals of an ``H x W x 3`` uint8 RGB image, as :func:`rank` returns them."""
    return rank(generator.generate_candidates(image), max_proposals)


def to_results(
    rles: PackedRLEs, scores: torch.Tensor, image_id: int, category_id: int
) -> list[dict[str, Any]]:
    """COCO result records (compressed-RLE ``segmentation``, ``score``) of one image."""
    size = [rles.height, rles.width]
    return [
        {
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": {"size": size, "counts": counts},
            "score": score,
        }
        for counts, score in zip(rles.counts_strings(), scores.tolist())
    ]


def agnostic_category(document: Mapping[str, Any]) -> int:
    """The category id of class-agnostic results: the ground truth's smallest (1 in COCO
    and LVIS), since COCOeval's class-agnostic mode gathers detections by the ground truth's
    categories; :func:`~sam_lightning.evaluation.coco_metrics.proposal_ar` accepts any."""
    return min(category["id"] for category in document["categories"])


def generate_proposals(
    generator: SamAutomaticMaskGenerator,
    images: Iterable[tuple[Mapping[str, Any], np.ndarray]],
    category_id: int,
    max_proposals: int = 1000,
) -> list[dict[str, Any]]:
    """COCO results of the proposals for ``(image info, image)`` pairs (``info["id"]`` is
    the image id), e.g. from :func:`~sam_lightning.evaluation.coco_metrics.read_images`."""
    results: list[dict[str, Any]] = []
    for info, image in images:
        rles, scores = propose(generator, image, max_proposals)
        results += to_results(rles, scores, int(info["id"]), category_id)
    return results


def run_from_config(job: EvalJob) -> dict[str, float] | None:
    """Runs App. D.3 on ``data.images`` / ``data.annotations`` (COCO or LVIS v1; ``data.format``
    ``auto``, ``coco`` or ``lvis``), writes ``output_dir/predictions.json`` (COCO results)
    and returns ``ar@100``, ``ar@300``, ``ar@1000``, ``ar@1000_small/_medium/_large`` and, for
    LVIS, ``ar@1000_frequent/_common/_rare``. ``job.eval`` holds the task's
    settings (:class:`~sam_lightning.settings.evaluate.ProposalsSettings`; ``max_images``:
    the first n images only). The images run through ``job.map_items``; ranks other than 0
    return None."""
    settings = job.settings("proposals_lvis")
    document = coco_metrics.load_ground_truth(job.data["annotations"])
    fmt = coco_metrics.resolve_format(job.data.get("format"), document)
    files = coco_metrics.image_files(document, job.data["images"])[: settings["max_images"]]
    coco_metrics.check_image_files(files)
    generator = proposal_generator(
        job.get_model(),
        points_per_side=settings["points_per_side"],
        nms_thresh=settings["nms_thresh"],
        points_per_batch=settings["points_per_batch"],
        stability_score_offset=settings["stability_score_offset"],
    )
    category_id = agnostic_category(document)

    def compute(index: int, loaded: tuple[Mapping[str, Any], np.ndarray]) -> list[Any]:
        return generate_proposals(generator, [loaded], category_id, settings["max_proposals"])

    per_image = job.map_items(settings)(
        len(files), compute, functools.partial(coco_metrics.read_file, files), "proposals"
    )
    if per_image is None:  # not rank 0
        return None
    results = [record for records in per_image for record in records]
    write_atomic(Path(job.output_dir) / PREDICTIONS_FILE, json.dumps(results).encode())
    return coco_metrics.proposal_ar(
        document,
        results,
        image_ids=[info["id"] for info, _ in files],
        by_frequency=fmt == "lvis",
        backend=settings["backend"],
    )
