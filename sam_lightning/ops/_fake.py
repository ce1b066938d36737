"""Fake (meta) kernels of the compiled operators, for FakeTensor tracing and torch.compile.

Imported by :mod:`sam_lightning.ops` when the extension is loaded (and by torch itself, which
``csrc/ops.cpp`` points here). Output sizes that depend on the data (lengths of counts
strings) are unbacked symbolic sizes.
"""

from __future__ import annotations

import torch
from torch.library import get_ctx, register_fake


def _batch_size(offsets: torch.Tensor) -> int:
    return offsets.shape[0] - 1


def _dynamic_1d(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return like.new_empty((get_ctx().new_dynamic_size(),), dtype=dtype)


@register_fake("sam_lightning::rle_encode")
def _rle_encode(masks):
    offsets = masks.new_empty((masks.shape[0] + 1,), dtype=torch.int64)
    return _dynamic_1d(masks, torch.uint8), offsets


@register_fake("sam_lightning::rle_decode")
def _rle_decode(chars, offsets, h, w):
    return chars.new_empty((_batch_size(offsets), h, w), dtype=torch.uint8)


@register_fake("sam_lightning::rle_area")
def _rle_area(chars, offsets, sizes):
    return chars.new_empty((_batch_size(offsets),), dtype=torch.int64)


@register_fake("sam_lightning::rle_to_bbox")
def _rle_to_bbox(chars, offsets, sizes):
    return chars.new_empty((_batch_size(offsets), 4), dtype=torch.float64)


@register_fake("sam_lightning::rle_iou")
def _rle_iou(dt_chars, dt_offsets, dt_sizes, gt_chars, gt_offsets, gt_sizes, iscrowd):
    shape = (_batch_size(dt_offsets), _batch_size(gt_offsets))
    return dt_chars.new_empty(shape, dtype=torch.float64)


@register_fake("sam_lightning::rle_merge")
def _rle_merge(chars, offsets, sizes, intersect):
    return _dynamic_1d(chars, torch.uint8)


@register_fake("sam_lightning::rle_compress")
def _rle_compress(counts, offsets):
    return _dynamic_1d(counts, torch.uint8), torch.empty_like(offsets)


@register_fake("sam_lightning::rle_decompress")
def _rle_decompress(chars, offsets):
    return _dynamic_1d(chars, torch.int64), torch.empty_like(offsets)


@register_fake("sam_lightning::rle_select")
def _rle_select(chars, offsets, index):
    return _dynamic_1d(chars, torch.uint8), offsets.new_empty((index.shape[0] + 1,))


# ---- post-processing ----
# An extension built before these operators existed lacks them (the public functions then use
# the reference implementations): register their fake kernels only when they are defined.


def _register_if_defined(name: str):
    if hasattr(torch.ops.sam_lightning, name.split("::")[1]):
        return register_fake(name)
    return lambda fake: fake


@_register_if_defined("sam_lightning::stability_score")
def _stability_score(logits, mask_threshold, threshold_offset):
    return logits.new_empty(logits.shape[:-2], dtype=torch.float32)


@_register_if_defined("sam_lightning::masks_to_boxes")
def _masks_to_boxes(masks):
    return masks.new_empty((*masks.shape[:-2], 4), dtype=torch.int64)


@_register_if_defined("sam_lightning::nms")
def _nms(boxes, scores, iou_threshold):
    return _dynamic_1d(boxes, torch.int64)


@_register_if_defined("sam_lightning::batched_nms")
def _batched_nms(boxes, scores, idxs, iou_threshold):
    return _dynamic_1d(boxes, torch.int64)


@_register_if_defined("sam_lightning::connected_components")
def _connected_components(masks):
    return masks.new_empty(masks.shape, dtype=torch.int32), masks.new_empty(
        masks.shape[:-2], dtype=torch.int64
    )


@_register_if_defined("sam_lightning::remove_small_regions")
def _remove_small_regions(masks, area_thresh, mode):
    return masks.new_empty(masks.shape, dtype=torch.bool), masks.new_empty(
        masks.shape[:-2], dtype=torch.bool
    )


# ---- edges ----


@_register_if_defined("sam_lightning::thin")
def _thin(masks):
    return masks.new_empty(masks.shape, dtype=torch.bool)


@_register_if_defined("sam_lightning::edge_nms")
def _edge_nms(edges, orientation, radius, border, multiplier):
    return torch.empty_like(edges)


@_register_if_defined("sam_lightning::correspond_pixels")
def _correspond_pixels(pred, gt, max_dist):
    return pred.new_empty(pred.shape, dtype=torch.int64), gt.new_empty(gt.shape, dtype=torch.int64)


@_register_if_defined("sam_lightning::boundary_pr_counts")
def _boundary_pr_counts(edges, ground_truth, thresholds, max_dist, thin):
    return edges.new_empty((thresholds.shape[0], 4), dtype=torch.int64)
