"""pycocotools' ``COCOeval`` for masks (``iouType="segm"``), re-implemented exactly and fast.

``evaluate`` returns the ``precision`` (T x R x K x A x M) and ``recall`` (T x K x A x M)
arrays of ``COCOeval.evaluate()`` + ``accumulate()``, equal to pycocotools' bit for bit
(``tests/evaluation/test_coco_metrics.py`` compares them on many random cases). Every step
keeps pycocotools' order of operations, so that each float is the same:

- detections per (image, category) (per image, in category order, when class-agnostic)
  sorted by a stable sort of ``-score`` and cut to ``maxDets[-1]``;
- IoUs from :func:`sam_lightning.ops.rle_iou` (the values of ``maskUtils.iou``), ground
  truth as ``COCO.annToRLE`` makes it (polygons and uncompressed RLEs by pycocotools);
- greedy matching per IoU threshold and area range: each detection in score order takes the
  free ground truth of highest IoU (>= threshold; ties: the later one), regular ground
  truth before ignored (crowd or out-of-range) ground truth; crowd regions stay free. It
  runs vectorised over thresholds, area ranges and (image, category) pairs, one detection
  rank at a time, over the detections that reach the lowest threshold with some object
  (the others never match, so skipping them changes nothing);
- accumulation per category and budget: a stable sort of ``-score`` over the images' cut
  lists in image order, cumulative TP/FP counts, ``tp / (tp + fp + eps)``, the monotone
  envelope, and ``np.searchsorted(recall, recThrs, side="left")``, 0 beyond the last
  detection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam_lightning import ops

#: ``COCOeval.Params`` for segm: IoU thresholds, recall thresholds, area ranges (all, small,
#: medium, large; bounds inclusive).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = np.array([[0, 1e10], [0, 32**2], [32**2, 96**2], [96**2, 1e10]], dtype=np.float64)


@dataclass
class _Objects:
    """Ground truths or detections sorted by group (image index x K + category index)."""

    group: np.ndarray  # int64, non-decreasing
    area: np.ndarray  # float64
    segmentations: list[Any]  # RLE dicts, or the annotations' segmentations for ground truth


def evaluate(
    document: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
    use_cats: bool,
    max_dets: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's ``precision`` and ``recall`` for ``results`` against ``document``.

    Args:
        document: instances document whose annotations all have ``id``, ``area`` and
            ``iscrowd`` (ids unique).
        results: COCO results with compressed-RLE ``segmentation`` on images of ``document``
            (``bbox`` is not read: areas are the masks').
        image_ids, cat_ids: ``params.imgIds`` and ``params.catIds``, sorted and unique.
        use_cats: ``params.useCats``.
        max_dets: ``params.maxDets``, sorted.
    """
    image_index = {image_id: n for n, image_id in enumerate(image_ids)}
    cat_index = {cat_id: n for n, cat_id in enumerate(cat_ids)}
    num_cats = len(cat_ids) if use_cats else 1
    gt, ignore, crowd, counted = _ground_truth(document, image_index, cat_index, use_cats)
    dt, score, rank = _detections(results, image_index, cat_index, use_cats, max_dets[-1])
    match = _match(document, image_ids, num_cats, gt, ignore, crowd, dt)
    area_ignored = _outside(gt.area) | ignore
    # A last, false entry for match == -1; matched is COCOeval's dtMatches != 0 (gt id 0).
    matched = np.append(counted, False)[match]
    areas = np.arange(len(AREA_RANGES))[:, None, None]
    dt_ignored = np.pad(area_ignored, ((0, 0), (0, 1)))[areas, match]
    dt_ignored |= ~matched & _outside(dt.area)[:, None, :]
    regular = np.stack(  # K x A: COCOeval's npig
        [np.bincount(gt.group % num_cats, ~row, num_cats) for row in area_ignored], axis=1
    ).astype(np.int64)
    return _accumulate(
        matched & ~dt_ignored, ~matched & ~dt_ignored, regular, dt.group, score, rank, num_cats,
        max_dets,
    )


def _outside(area: np.ndarray) -> np.ndarray:
    """A x N: whether each area lies outside each area range."""
    return (area < AREA_RANGES[:, :1]) | (area > AREA_RANGES[:, 1:])


def _ground_truth(
    document: Mapping[str, Any],
    image_index: Mapping[int, int],
    cat_index: Mapping[int, int],
    use_cats: bool,
) -> tuple[_Objects, np.ndarray, np.ndarray, np.ndarray]:
    """The evaluated ground truth in COCOeval's order (by image, category, file order) with
    its ``ignore`` (``iscrowd`` set), crowd (``int(iscrowd)``, for IoU and re-matching)
    and ``id != 0`` flags."""
    rows = []
    for seq, ann in enumerate(document["annotations"]):
        image, cat = image_index.get(ann["image_id"]), cat_index.get(ann["category_id"])
        if image is not None and cat is not None:
            rows.append((image, cat, seq, ann))
    anns = [row[3] for row in rows]
    image, cat, seq = (np.array([row[k] for row in rows], dtype=np.int64) for k in range(3))
    group = image * len(cat_index) + cat if use_cats else image
    order = np.lexsort((seq, cat, group))
    anns = [anns[k] for k in order]
    area = np.array([a["area"] for a in anns], dtype=np.float64)
    ignore = np.array([bool(a["iscrowd"]) for a in anns], dtype=bool)
    crowd = np.array([int(a["iscrowd"]) != 0 for a in anns], dtype=bool)
    counted = np.array([a["id"] != 0 for a in anns], dtype=bool)
    return _Objects(group[order], area, anns), ignore, crowd, counted


def _detections(
    results: Sequence[Mapping[str, Any]],
    image_index: Mapping[int, int],
    cat_index: Mapping[int, int],
    use_cats: bool,
    max_det: int,
) -> tuple[_Objects, np.ndarray, np.ndarray]:
    """The evaluated detections by group, score (stable) and category (class-agnostic),
    the first ``max_det`` per group, with their scores and ranks in the group."""
    count = len(results)
    image = np.fromiter((image_index.get(r["image_id"], -1) for r in results), np.int64, count)
    cat = np.fromiter((cat_index.get(r["category_id"], -1) for r in results), np.int64, count)
    score = np.fromiter((r["score"] for r in results), np.float64, count)
    kept = np.flatnonzero((image >= 0) & (cat >= 0))
    group = image[kept] * len(cat_index) + cat[kept] if use_cats else image[kept]
    sort = np.lexsort((kept, cat[kept], -score[kept], group))
    order, group = kept[sort], group[sort]
    rank = np.arange(len(group)) - np.searchsorted(group, group)
    order, group, rank = order[rank < max_det], group[rank < max_det], rank[rank < max_det]
    segmentations = [results[k]["segmentation"] for k in order]
    area = ops.rle_area(segmentations).numpy().astype(np.float64) if len(order) else np.zeros(0)
    return _Objects(group, area, segmentations), score[order], rank


def _gt_rle(ann: Mapping[str, Any], image: Mapping[str, Any]) -> Any:
    """``COCO.annToRLE``: polygons and uncompressed RLEs through pycocotools."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        from pycocotools import mask as mask_api

        return mask_api.merge(mask_api.frPyObjects(segmentation, image["height"], image["width"]))
    if isinstance(segmentation["counts"], list):
        from pycocotools import mask as mask_api

        return mask_api.frPyObjects(segmentation, image["height"], image["width"])
    return segmentation


def _match(
    document: Mapping[str, Any],
    image_ids: Sequence[int],
    num_cats: int,
    gt: _Objects,
    ignore: np.ndarray,
    crowd: np.ndarray,
    dt: _Objects,
) -> np.ndarray:
    """COCOeval.evaluateImg's matching: the ground-truth index each detection matches per
    area range and IoU threshold (A x T x D, -1 for none)."""
    num_areas, num_thresholds = len(AREA_RANGES), len(IOU_THRESHOLDS)
    match = np.full((num_areas, num_thresholds, len(dt.group)), -1, dtype=np.int32)
    both = np.intersect1d(gt.group, dt.group)
    if not len(both):
        return match
    gt_start = np.searchsorted(gt.group, both)
    gt_count = np.searchsorted(gt.group, both, side="right") - gt_start
    dt_start = np.searchsorted(dt.group, both)
    dt_count = np.searchsorted(dt.group, both, side="right") - dt_start
    ious = _pair_ious(document, image_ids, num_cats, both, gt, crowd, dt, gt_start, dt_start)
    # Rows: (group, detection rank) pairs; a row's IoUs are ious[row_start : +gt_count].
    row_group = np.repeat(np.arange(len(both)), dt_count)
    first_row = np.cumsum(dt_count) - dt_count
    row_rank = np.arange(len(row_group)) - first_row[row_group]
    pair_start = np.cumsum(dt_count * gt_count) - dt_count * gt_count
    row_start = pair_start[row_group] + row_rank * gt_count[row_group]
    candidate = np.maximum.reduceat(ious, row_start) >= IOU_THRESHOLDS.min()
    row_group, row_start = row_group[candidate], row_start[candidate]
    row_det = dt_start[row_group] + row_rank[candidate]
    count = np.bincount(row_group, minlength=len(both))
    first = np.cumsum(count) - count
    area_ignored = _outside(gt.area) | ignore
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None, None]
    # Groups in buckets of ground-truth counts up to a power of two, padded to it.
    bucket = 1 << np.ceil(np.log2(gt_count)).astype(np.int64)
    for padded in np.unique(bucket[count > 0]):
        groups = np.flatnonzero((bucket == padded) & (count > 0))
        groups = groups[np.argsort(-count[groups], kind="stable")]
        column = np.arange(padded)
        valid = column < gt_count[groups, None]
        gt_index = np.where(valid, gt_start[groups, None] + column, 0)
        gt_ignored = area_ignored[:, gt_index]  # A x G x P
        stays_free = crowd[gt_index] & valid
        free = np.broadcast_to(valid, (num_areas, num_thresholds, *valid.shape)).copy()
        negated = -count[groups]  # ascending
        for step in range(int(count[groups[0]])):
            n = int(np.searchsorted(negated, -step))  # the groups with > step rows
            rows = first[groups[:n]] + step
            iou = np.where(
                valid[:n], ious[np.where(valid[:n], row_start[rows, None] + column, 0)], -1.0
            )
            allowed = free[:, :, :n] & (iou >= thresholds)
            regular = allowed & ~gt_ignored[:, None, :n]
            pick = np.where(regular.any(axis=-1, keepdims=True), regular, allowed)
            value = np.where(pick, iou, -np.inf)
            best = padded - 1 - np.argmax(
                (value == value.max(axis=-1, keepdims=True))[..., ::-1], axis=-1
            )
            a, t, g = np.nonzero(pick.any(axis=-1))
            chosen = best[a, t, g]
            match[a, t, row_det[rows[g]]] = gt_index[g, chosen]
            taken = ~stays_free[g, chosen]
            free[a[taken], t[taken], g[taken], chosen[taken]] = False
    return match


def _pair_ious(
    document: Mapping[str, Any],
    image_ids: Sequence[int],
    num_cats: int,
    both: np.ndarray,
    gt: _Objects,
    crowd: np.ndarray,
    dt: _Objects,
    gt_start: np.ndarray,
    dt_start: np.ndarray,
) -> np.ndarray:
    """The IoUs of the groups in ``both``, one group after the other, each detections x
    ground truths (row-major): one :func:`ops.rle_iou` call per image."""
    images = {image["id"]: image for image in document["images"]}
    gt_end = np.searchsorted(gt.group, both, side="right")
    dt_end = np.searchsorted(dt.group, both, side="right")
    image_of = both // num_cats
    bounds = np.flatnonzero(np.diff(image_of, prepend=-1, append=-1))
    blocks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        image = images[image_ids[image_of[lo]]]
        dts = [k for j in range(lo, hi) for k in range(dt_start[j], dt_end[j])]
        gts = [k for j in range(lo, hi) for k in range(gt_start[j], gt_end[j])]
        matrix = ops.rle_iou(
            [dt.segmentations[k] for k in dts],
            [_gt_rle(gt.segmentations[k], image) for k in gts],
            crowd[gts],
        ).numpy()
        row = col = 0
        for j in range(lo, hi):
            rows, cols = dt_end[j] - dt_start[j], gt_end[j] - gt_start[j]
            blocks.append(matrix[row : row + rows, col : col + cols].ravel())
            row, col = row + rows, col + cols
    return np.concatenate(blocks)


def _accumulate(
    tps: np.ndarray,
    fps: np.ndarray,
    regular: np.ndarray,
    group: np.ndarray,
    score: np.ndarray,
    rank: np.ndarray,
    num_cats: int,
    max_dets: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate from the detections' TP and FP flags (A x T x D) and the regular
    ground-truth counts per category and area range (K x A).

    Per category, the budgets' detection lists are padded at the end to one length with
    neither-TP-nor-FP entries, which repeat the last counts: they change no envelope value
    and come after every recall a real entry reaches. ``searchsorted(recall, thresholds)``
    counts the entries below each threshold: with ``tp / npig`` non-decreasing in ``tp``,
    that is the count of entries whose TP count is below the smallest ``c`` with
    ``c / npig >= threshold``, found for all rows at once on integer keys.
    """
    num_areas, num_thresholds = len(AREA_RANGES), len(IOU_THRESHOLDS)
    shape = (num_thresholds, len(RECALL_THRESHOLDS), num_cats, num_areas, len(max_dets))
    precision, recall = -np.ones(shape), -np.ones((shape[0], *shape[2:]))
    image, cat = group // num_cats, group % num_cats
    order = np.lexsort((rank, image, -score, cat))  # COCOeval's stable sort of -scores
    tps, fps, rank = tps[:, :, order], fps[:, :, order], rank[order]
    bounds = np.searchsorted(cat[order], np.arange(num_cats + 1))
    for k in range(num_cats):
        areas = np.flatnonzero(regular[k] > 0)
        if not len(areas):
            continue
        lo, hi = bounds[k], bounds[k + 1]
        lists = [np.flatnonzero(rank[lo:hi] < max_det) for max_det in max_dets]
        length = np.array([len(kept) for kept in lists])
        width = int(length.max())
        # M x width indices into the category's detections and a last, blank entry.
        index = np.stack(
            [np.pad(kept, (0, width - len(kept)), constant_values=hi - lo) for kept in lists]
        )
        blank = np.zeros((len(areas), num_thresholds, 1), dtype=bool)
        tp_int, fp = (
            np.cumsum(np.concatenate([flags[areas, :, lo:hi], blank], axis=2)[:, :, index], axis=3)
            for flags in (tps, fps)
        )  # A' x T x M x width
        tp, fp = tp_int.astype(np.float64), fp.astype(np.float64)
        npig = regular[k, areas]
        rc = tp / npig[:, None, None, None]
        pr = tp / (fp + tp + np.spacing(1))
        last = rc[..., -1] if width else np.zeros(rc.shape[:3])  # A' x T x M
        recall[:, k, areas, :] = last.transpose(1, 0, 2)
        if not width:
            precision[:, :, k, areas, :] = 0
            continue
        envelope = np.maximum.accumulate(pr[..., ::-1], axis=3)[..., ::-1]
        needed = np.stack(  # A' x R: the smallest TP count reaching each recall threshold
            [np.searchsorted(np.arange(n + 1) / n, RECALL_THRESHOLDS) for n in npig.tolist()]
        )
        stride = int(npig.max()) + 1
        rows = np.arange(tp_int[..., 0].size).reshape(tp_int.shape[:3])
        keys = (rows[..., None] * stride + tp_int).ravel()
        queries = rows[..., None] * stride + needed[:, None, None, :]
        found = np.searchsorted(keys, queries.ravel()).reshape(queries.shape)
        found -= rows[..., None] * width
        q = np.take_along_axis(envelope, np.minimum(found, width - 1), axis=3)
        q[found >= length[:, None]] = 0
        precision[:, :, k, areas, :] = q.transpose(1, 3, 0, 2)
    return precision, recall
