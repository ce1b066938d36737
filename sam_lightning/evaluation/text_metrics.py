"""The metrics of the text-to-mask evaluation, from its ``predictions.json`` records.

``giou`` (mean of the per-query IoUs: the "mIoU" / "gIoU" of the referring-segmentation
literature), ``ciou`` (cumulative IoU: the sum of intersections over the sum of unions),
both also ``_small``/``_medium``/``_large`` by the ground truth's pixel count (COCO's area
ranges, :data:`~sam_lightning.evaluation.points.AREA_RANGES`), and for ``text_coco``
``giou_category_mean`` (the mean over categories of their gIoU, :func:`category_giou`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sam_lightning.evaluation.points import size_groups


def category_giou(records: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """Per ``category_id`` of the records, the mean IoU of its queries."""
    ious: dict[int, list[float]] = {}
    for record in records:
        ious.setdefault(record["category_id"], []).append(record["iou"])
    return {category: float(np.mean(values)) for category, values in sorted(ious.items())}


def text_metrics(
    records: Iterable[Mapping[str, Any]], per_category: bool = False
) -> dict[str, float]:
    """Flat metrics from ``predictions.json`` records: ``giou`` (mean of the records'
    ``iou``), ``ciou`` (sum of ``intersection`` over sum of ``union``), the same with a
    ``_small``/``_medium``/``_large`` suffix for each size (by ``gt_area``; sizes without
    queries are left out) and ``num_queries[_<size>]``; with ``per_category`` also
    ``giou_category_mean`` (the mean of :func:`category_giou`) and ``num_categories``."""
    records = list(records)
    metrics: dict[str, float] = {}
    for suffix, group in size_groups(records).items():
        metrics[f"num_queries{suffix}"] = float(len(group))
        if not group:
            continue
        metrics[f"giou{suffix}"] = float(np.mean([r["iou"] for r in group]))
        intersection = sum(int(r["intersection"]) for r in group)
        metrics[f"ciou{suffix}"] = intersection / sum(int(r["union"]) for r in group)
    if per_category:
        by_category = category_giou(records)
        metrics["num_categories"] = float(len(by_category))
        if by_category:
            metrics["giou_category_mean"] = float(np.mean(list(by_category.values())))
    return metrics
