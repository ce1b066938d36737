"""Single-point and interactive segmentation (SAM paper §7.1, App. D.1).

Per ground-truth object, the first click is positive, at the maximum of the object's interior
distance transform; each later click goes to the pixel of the error region (false negatives:
positive click; false positives: negative click) farthest from that region's boundary, the
protocol of RITM: :func:`sam_lightning.inference.clicks.click_session`, which the training
validation (``val/miou_<k>clicks``) runs too, with the same IoU
(:func:`~sam_lightning.inference.clicks.mask_iou`). Clicks are placed and IoUs measured at the
image's original resolution.

After click 1 the model gives its 3 masks: the most confident one (highest predicted IoU) is
the prediction, the best of the 3 against the ground truth is the *oracle* (§7.1). After
later clicks it gets every click so far and, as ``mask_input``, the previous prediction's
low-resolution logits, and gives its single mask (the output for several prompts, §3). An
object predicted perfectly gets no further clicks and keeps its IoU.

Work per image: the encoder runs once; the objects' prompts are decoded together, in batches
of ``objects_per_batch``, one decoder call per batch and click.

Outputs: ``predictions.json`` in the COCO results format, one record per object: the 1-click
most confident mask (``segmentation`` RLE, ``score`` its predicted IoU, ``image_id``,
``category_id``) plus ``gt_id`` (the annotation's id), ``gt_area`` (its ``area``), ``ious``
(IoU after each click, 1 to the largest N), ``oracle_iou`` and ``clicks`` (``[x, y, label]``
in pixels of the original image, 1 positive, 0 negative). :func:`points_metrics` computes the
metrics from these records alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sam_lightning.evaluation.item_map import InProcess, ItemMap
from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.inference.clicks import click_session
from sam_lightning.settings.evaluate import PAPER_NUM_CLICKS

if TYPE_CHECKING:
    from sam_lightning.data.coco import CocoDataset
    from sam_lightning.inference.predictor import SamPredictor
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.evaluation.points")

#: COCO's object size ranges by area in pixels (``COCOeval`` ``areaRng``), half-open here.
AREA_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, np.inf)}
PREDICTIONS_FILE = "predictions.json"


@dataclass
class ClickSession:
    """The simulated clicks on ``P`` objects of one image and what they gave.

    Attributes:
        ious: ``P×N`` IoU with the ground truth after each of N clicks.
        oracle_ious: ``P`` best IoU of the 3 masks after click 1.
        first_masks: ``P×H×W`` bool most confident masks after click 1.
        first_scores: ``P`` their predicted IoU.
        clicks: ``P×N×2`` long ``(x, y)`` pixels of the original image.
        labels: ``P×N`` long: 1 positive, 0 negative, -1 no click (nothing left to correct).
    """

    ious: Tensor
    oracle_ious: Tensor
    first_masks: Tensor
    first_scores: Tensor
    clicks: Tensor
    labels: Tensor


@torch.inference_mode()
def simulate_clicks(predictor: SamPredictor, gt_masks: Tensor, num_clicks: int) -> ClickSession:
    """Runs the click protocol (module docstring) on the image set in ``predictor``.

    Args:
        predictor: a :class:`~sam_lightning.inference.predictor.SamPredictor` after
            ``set_image``.
        gt_masks: ``P×H×W`` bool non-empty ground-truth masks at the image's original size.
        num_clicks: clicks per object, at least 1.
    """
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be at least 1, got {num_clicks}")
    model: Sam = predictor.model
    size, input_size = predictor.original_size, predictor.input_size
    gt = gt_masks.to(predictor.device, torch.bool)
    if tuple(gt.shape[1:]) != tuple(size):
        raise ValueError(f"gt_masks are {tuple(gt.shape[1:])}, the image is {tuple(size)}")

    def decode(coords: Tensor, labels: Tensor, mask_inputs: Tensor | None, rows: Tensor):
        return model.decode(
            predictor.features,
            point_coords=predictor.transform.apply_coords_torch(coords, size),
            point_labels=labels,
            mask_inputs=mask_inputs,
            multimask_output=mask_inputs is None,  # 3 masks for click 1 only (§3)
        )

    def to_masks(low_res: Tensor) -> Tensor:
        return model.postprocess_masks(low_res, input_size, size) > model.mask_threshold

    session = click_session(decode, to_masks, gt, num_clicks, keep_first=True)
    return ClickSession(
        ious=session.ious,
        oracle_ious=session.first_ious.amax(1),
        first_masks=session.first_masks,
        first_scores=session.first_scores,
        clicks=session.clicks,
        labels=session.labels,
    )


def _records(
    session: ClickSession, annotations: Sequence[Mapping[str, Any]], image_id: int
) -> list[dict[str, Any]]:
    """The ``predictions.json`` records (module docstring) of one session's objects."""
    from sam_lightning.ops import rle_encode

    rles = rle_encode(session.first_masks.cpu())
    ious, oracle = session.ious.tolist(), session.oracle_ious.tolist()
    scores, labels = session.first_scores.tolist(), session.labels.tolist()
    clicks = session.clicks.tolist()
    records = []
    for k, ann in enumerate(annotations):
        made = [[x, y, label] for (x, y), label in zip(clicks[k], labels[k]) if label >= 0]
        counts = rles[k]["counts"]
        records.append(
            {
                "image_id": image_id,
                "category_id": ann.get("category_id"),
                "segmentation": {
                    "size": rles[k]["size"],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                },
                "score": scores[k],
                "gt_id": ann["id"],
                "gt_area": float(ann["area"]),
                "ious": ious[k],
                "oracle_iou": oracle[k],
                "clicks": made,
            }
        )
    return records


def size_of(area: float) -> str:
    """``small``, ``medium`` or ``large`` (:data:`AREA_RANGES`) for an object's area."""
    return next(name for name, (low, high) in AREA_RANGES.items() if low <= area < high)


def size_groups(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The records by metric suffix: ``""`` all of them, ``"_small"``, ``"_medium"`` and
    ``"_large"`` those whose ``gt_area`` is of that size."""
    groups = {"": list(records)}
    for name in AREA_RANGES:
        groups[f"_{name}"] = [r for r in records if size_of(r["gt_area"]) == name]
    return groups


def points_metrics(
    records: Iterable[Mapping[str, Any]], num_clicks: Sequence[int] = PAPER_NUM_CLICKS
) -> dict[str, float]:
    """Flat metrics from ``predictions.json`` records: ``miou_<n>pt`` (mean over objects of
    the IoU after n clicks, the most confident mask at n = 1), ``miou_1pt_oracle``, the same
    with a ``_small``/``_medium``/``_large`` suffix for each size (by ``gt_area``; sizes
    without objects are left out), and ``num_objects[_<size>]``. Click 1 is always reported."""
    records = list(records)
    clicks = sorted(set(num_clicks) | {1})
    if records and len(records[0]["ious"]) < clicks[-1]:
        raise ValueError(f"records hold {len(records[0]['ious'])} clicks, not {clicks[-1]}")
    metrics: dict[str, float] = {}
    for suffix, group in size_groups(records).items():
        metrics[f"num_objects{suffix}"] = float(len(group))
        if not group:
            continue
        ious = np.array([r["ious"] for r in group], dtype=np.float64)
        for n in clicks:
            metrics[f"miou_{n}pt{suffix}"] = float(ious[:, n - 1].mean())
        oracle = np.array([r["oracle_iou"] for r in group], dtype=np.float64)
        metrics[f"miou_1pt_oracle{suffix}"] = float(oracle.mean())
    return metrics


def _check_num_clicks(num_clicks: Sequence[int]) -> list[int]:
    values = list(num_clicks)
    if not values or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
        raise ValueError(f"num_clicks must be a non-empty list of ints >= 1, got {values}")
    return values


def _evaluate_image(
    predictor: SamPredictor, sample: Mapping[str, Any], num_clicks: int, objects_per_batch: int
) -> tuple[list[dict[str, Any]], int]:
    """The records of one dataset item's objects, and how many were left out as empty."""
    from sam_lightning.ops import rle_decode

    annotations = sample["annotations"]
    gt = rle_decode([ann["segmentation"] for ann in annotations]).bool()
    present = gt.flatten(1).any(1)
    annotations = [ann for ann, keep in zip(annotations, present.tolist()) if keep]
    gt = gt[present]
    records: list[dict[str, Any]] = []
    if annotations:
        predictor.set_image(sample["image"])
        image_id = sample["image_info"]["image_id"]
        for start in range(0, len(annotations), objects_per_batch):
            part = slice(start, start + objects_per_batch)
            session = simulate_clicks(predictor, gt[part], num_clicks)
            records += _records(session, annotations[part], image_id)
    return records, len(present) - len(annotations)


def evaluate_points(
    predictor: SamPredictor,
    dataset: CocoDataset,
    num_clicks: Sequence[int] = PAPER_NUM_CLICKS,
    objects_per_batch: int = 64,
    max_images: int | None = None,
    progress: bool = True,
    map_items: ItemMap | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]] | None:
    """Evaluates ``predictor`` on every object of ``dataset`` (a
    :class:`~sam_lightning.data.coco.CocoDataset` or ``LvisDataset``; the first
    ``max_images`` images if given); returns :func:`points_metrics` and the
    ``predictions.json`` records. Objects whose mask is empty are left out and counted in
    ``num_skipped_empty``. Unreadable images and malformed annotations raise (see the
    dataset), as leaving them out would change the metrics. ``map_items`` runs the images
    (:mod:`~sam_lightning.evaluation.item_map`; one process by default); on ranks other
    than 0 it returns None, and so does this function."""
    clicks = _check_num_clicks(num_clicks)
    if objects_per_batch < 1:
        raise ValueError(f"objects_per_batch must be at least 1, got {objects_per_batch}")
    count = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    map_items = map_items or InProcess(progress)

    def compute(index: int, sample: Mapping[str, Any]) -> list[Any]:
        return list(_evaluate_image(predictor, sample, max(clicks), objects_per_batch))

    values = map_items(count, compute, dataset.__getitem__, desc="points")
    predictor.reset_image()
    if values is None:
        return None
    records = [record for image_records, _ in values for record in image_records]
    metrics = points_metrics(records, clicks)
    metrics["num_images"] = float(count)
    metrics["num_skipped_empty"] = float(sum(skipped for _, skipped in values))
    return metrics, records


def open_dataset(data_cfg: Mapping[str, Any]) -> CocoDataset:
    """The dataset of ``data.format`` (``coco`` or ``lvis``), ``data.annotations`` and
    ``data.images``."""
    from sam_lightning.data.coco import CocoDataset, LvisDataset

    kinds = {"coco": CocoDataset, "lvis": LvisDataset}
    kind = data_cfg.get("format", "coco")
    if kind not in kinds:
        raise ValueError(f"data.format must be one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind](data_cfg["annotations"], data_cfg["images"])


def run_from_config(job: EvalJob) -> dict[str, float] | None:
    """``+eval=points_coco`` / ``points_lvis``: runs :func:`evaluate_points` with the
    ``eval`` settings, writes ``<output_dir>/predictions.json`` and returns the metrics."""
    from sam_lightning.file_io import write_atomic
    from sam_lightning.inference.predictor import SamPredictor

    settings = job.settings("points_coco")
    dataset = open_dataset(job.data)  # fails on bad paths before a large model is built
    clicks = _check_num_clicks(settings["num_clicks"])
    log.info("points: %s on %s, N = %s clicks", dataset, job.device, clicks)
    result = evaluate_points(
        SamPredictor(job.get_model()),
        dataset,
        num_clicks=clicks,
        objects_per_batch=int(settings["objects_per_batch"]),
        max_images=settings["max_images"],
        map_items=job.map_items(settings),
    )
    if result is None:  # not rank 0
        return None
    metrics, records = result
    target = write_atomic(Path(job.output_dir) / PREDICTIONS_FILE, json.dumps(records).encode())
    log.info("%d object predictions in %s", len(records), target)
    return metrics
