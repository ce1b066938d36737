"""Running a text-enabled predictor on text queries: masks, records and their metrics.

Work per image (:class:`~sam_lightning.evaluation.text_queries.TextSample`): the encoder
runs once; the texts are decoded together in batches of ``queries_per_batch``; of the 3
masks of each (multimask output) the most confident one (highest predicted IoU) is the
prediction, measured against the query's ground truth at the image's original resolution.
A query whose ground truth is empty is left out and counted (``num_skipped_empty``), so
that an IoU is always defined.

Records (``predictions.json``, the COCO results format), one per query: ``image_id``, the
sample's fields (``category_id``, for RefCOCO ``ref_id``, ``ann_id``, ``sent_id`` and
``sentence``), the prediction as a compressed RLE ``segmentation``, ``score`` (its
predicted IoU), ``text`` (as given to CLIP), ``iou``, ``intersection``, ``union`` and
``gt_area`` (pixels); :func:`~sam_lightning.evaluation.text_metrics.text_metrics` computes
the metrics from them alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sam_lightning.evaluation.item_map import InProcess, ItemMap
from sam_lightning.evaluation.text_metrics import text_metrics
from sam_lightning.evaluation.text_queries import TextSample

if TYPE_CHECKING:
    from sam_lightning.inference.predictor import SamPredictor


@torch.inference_mode()
def segment_texts(
    predictor: SamPredictor, texts: Sequence[str], queries_per_batch: int = 64
) -> tuple[Tensor, Tensor]:
    """The most confident of the 3 masks of each text prompt alone on the image set in
    ``predictor`` (a text-enabled :class:`~sam_lightning.inference.predictor.SamPredictor`):
    ``Q×H×W`` bool masks and their ``Q`` predicted IoUs."""
    masks, scores = [], []
    for start in range(0, len(texts), queries_per_batch):
        batch = list(texts[start : start + queries_per_batch])
        three, three_scores, _ = predictor.predict_torch(
            None, None, text=batch, multimask_output=True
        )
        best = three_scores.argmax(1)
        rows = torch.arange(len(batch), device=best.device)
        masks.append(three[rows, best].bool())
        scores.append(three_scores[rows, best].float())
    return torch.cat(masks), torch.cat(scores)


def _records(
    sample: TextSample, keep: Tensor, masks: Tensor, scores: Tensor
) -> list[dict[str, Any]]:
    """The ``predictions.json`` records (module docstring) of the kept queries of a sample."""
    from sam_lightning.ops import rle_encode

    gt = sample.gt_masks[keep].to(masks.device)
    intersection = (masks & gt).flatten(1).sum(1).tolist()
    union = (masks | gt).flatten(1).sum(1).tolist()
    gt_area = gt.flatten(1).sum(1).tolist()
    rles = rle_encode(masks.cpu())
    records = []
    for k, q in enumerate(torch.nonzero(keep)[:, 0].tolist()):
        counts = rles[k]["counts"]
        records.append(
            {
                "image_id": sample.image_id,
                **sample.fields[q],
                "segmentation": {
                    "size": rles[k]["size"],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                },
                "score": scores[k].item(),
                "text": sample.texts[q],
                "iou": intersection[k] / union[k],
                "intersection": intersection[k],
                "union": union[k],
                "gt_area": gt_area[k],
            }
        )
    return records


def _evaluate_sample(
    predictor: SamPredictor, sample: TextSample, queries_per_batch: int
) -> tuple[list[dict[str, Any]], int]:
    """The records of one sample's queries, and how many were left out as empty."""
    if len(sample.gt_masks) != len(sample.texts) or len(sample.fields) != len(sample.texts):
        raise ValueError(
            f"image {sample.image_id}: {len(sample.texts)} texts, {len(sample.gt_masks)} "
            f"ground-truth masks and {len(sample.fields)} record fields"
        )
    keep = sample.gt_masks.flatten(1).any(1)
    records: list[dict[str, Any]] = []
    if keep.any():
        predictor.set_image(sample.image)
        if tuple(sample.gt_masks.shape[1:]) != tuple(predictor.original_size):
            raise ValueError(
                f"image {sample.image_id}: ground truth is {tuple(sample.gt_masks.shape[1:])}, "
                f"the image {tuple(predictor.original_size)}"
            )
        texts = [text for text, kept in zip(sample.texts, keep.tolist()) if kept]
        masks, scores = segment_texts(predictor, texts, queries_per_batch)
        records = _records(sample, keep, masks, scores)
    return records, len(keep) - len(records)


def evaluate_text(
    predictor: SamPredictor,
    samples: Sequence[TextSample],
    queries_per_batch: int = 64,
    max_images: int | None = None,
    progress: bool = True,
    per_category: bool = False,
    map_items: ItemMap | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]] | None:
    """Evaluates a text-enabled ``predictor`` on every query of ``samples`` (a sequence of
    :class:`TextSample`, e.g. :class:`~sam_lightning.evaluation.text_queries.CocoTextQueries`
    or :class:`~sam_lightning.evaluation.text_queries.RefCocoTextQueries`; the
    first ``max_images`` if given); returns :func:`text_metrics` (``per_category`` as
    there), ``num_images``, ``num_skipped_empty`` (queries with an empty ground truth, left
    out) and ``num_skipped_<reason>`` (left out by the source), and the
    ``predictions.json`` records. ``map_items`` runs the images
    (:mod:`~sam_lightning.evaluation.item_map`; one process by default); on ranks other
    than 0 it returns None, and so does this function."""
    if queries_per_batch < 1:
        raise ValueError(f"queries_per_batch must be at least 1, got {queries_per_batch}")
    count = len(samples) if max_images is None else min(int(max_images), len(samples))
    map_items = map_items or InProcess(progress)

    def compute(index: int, sample: TextSample) -> list[Any]:
        image_records, empty = _evaluate_sample(predictor, sample, queries_per_batch)
        return [image_records, {"empty": empty, **sample.skipped}]

    values = map_items(count, compute, samples.__getitem__, desc="text")
    predictor.reset_image()
    if values is None:
        return None
    records = [record for image_records, _ in values for record in image_records]
    skipped: dict[str, int] = {"empty": 0}
    for _, image_skipped in values:
        for reason, number in image_skipped.items():
            skipped[reason] = skipped.get(reason, 0) + number
    metrics = text_metrics(records, per_category=per_category)
    metrics["num_images"] = float(count)
    metrics.update((f"num_skipped_{reason}", float(n)) for reason, n in skipped.items())
    return metrics, records
