"""PyTorch/NumPy reference implementations of the post-processing operators.

Same signatures, results and ``ValueError`` messages as the compiled kernels
(``csrc/postprocess/``); :mod:`sam_lightning.ops.postprocess` falls back to them when the
extension is not loaded. Nothing here loops over masks or pixels in Python: connected
components are found on the runs of each row (a run links to the runs of the row above that
touch it, 8-connectivity) with a vectorised union-find; NMS loops over the kept boxes only.
"""

from __future__ import annotations

import numpy as np
import torch

_FLOAT_LOGITS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.bool, torch.uint8)
_MODES = ("holes", "islands")
_INT32_MAX = 2**31 - 1
# Pixels per chunk of the run extraction (bounds the temporary arrays).
_CHUNK_PIXELS = 1 << 24


def dtype_name(dtype: torch.dtype) -> str:
    """``float32``, ``bool``...: the names the C++ messages print (``c10::getDtypeNames``)."""
    return str(dtype).removeprefix("torch.")


def _check_dtype(op: str, arg: str, tensor: torch.Tensor, allowed, expected: str) -> None:
    if tensor.dtype not in allowed:
        raise ValueError(f"{op}: {arg} must be {expected}, got {dtype_name(tensor.dtype)}")


def _check_masks(op: str, masks: torch.Tensor, batched_only: bool = False) -> None:
    """bool/uint8, H x W or N x H x W (``batched_only``: at least 2-D, any leading dims)."""
    _check_dtype(op, "masks", masks, _MASK_DTYPES, "a bool or uint8 tensor")
    if batched_only:
        if masks.dim() < 2:
            raise ValueError(
                f"{op}: masks must have at least 2 dimensions (..., H, W), got {masks.dim()}-D"
            )
        return
    if masks.dim() not in (2, 3):
        raise ValueError(f"{op}: masks must be H x W or N x H x W, got {masks.dim()}-D")
    h, w = masks.shape[-2:]
    if h * w > _INT32_MAX:
        raise ValueError(
            f"{op}: masks must have at most {_INT32_MAX} pixels per mask (int32 labels), "
            f"got {h} x {w}"
        )


def _check_boxes(op: str, boxes: torch.Tensor, scores: torch.Tensor) -> int:
    _check_dtype(op, "boxes", boxes, (torch.float32, torch.float64), "float32 or float64")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: boxes must have shape (N, 4), got {list(boxes.shape)}")
    n = boxes.shape[0]
    if not scores.is_floating_point():
        raise ValueError(
            f"{op}: scores must be a floating-point tensor, got {dtype_name(scores.dtype)}"
        )
    if scores.dim() != 1 or scores.shape[0] != n:
        raise ValueError(f"{op}: scores must have shape ({n},), got {list(scores.shape)}")
    return n


# ---- stability score -------------------------------------------------------------------


def stability_score(
    logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    op = "stability_score"
    expected = "a float32, float64, float16 or bfloat16 tensor"
    _check_dtype(op, "logits", logits, _FLOAT_LOGITS, expected)
    if logits.dim() < 2:
        raise ValueError(
            f"{op}: logits must have at least 2 dimensions (..., H, W), got {logits.dim()}-D"
        )
    # Exactly segment_anything.utils.amg.calculate_stability_score.
    intersections = (
        (logits > (mask_threshold + threshold_offset))
        .sum(-1, dtype=torch.int16)
        .sum(-1, dtype=torch.int32)
    )
    unions = (
        (logits > (mask_threshold - threshold_offset))
        .sum(-1, dtype=torch.int16)
        .sum(-1, dtype=torch.int32)
    )
    return intersections / unions


# ---- boxes of masks ---------------------------------------------------------------------


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    _check_masks("masks_to_boxes", masks, batched_only=True)
    *batch, h, w = masks.shape
    if h == 0 or w == 0:
        return torch.zeros((*batch, 4), dtype=torch.int64)
    fg = masks != 0
    rows = fg.any(-1).to(torch.uint8)  # [..., H]
    cols = fg.any(-2).to(torch.uint8)  # [..., W]
    top = rows.argmax(-1)  # the first maximum
    bottom = (h - 1) - rows.flip(-1).argmax(-1)
    left = cols.argmax(-1)
    right = (w - 1) - cols.flip(-1).argmax(-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * rows.any(-1, keepdim=True)


# ---- non-maximum suppression --------------------------------------------------------------


def _select_max(a, b):
    """``std::max(a, b)`` of torchvision's kernel: ``a < b ? b : a`` (NaN keeps ``a``)."""
    return np.where(a < b, b, a)


def _select_min(a, b):
    """``std::min(a, b)``: ``b < a ? b : a``."""
    return np.where(b < a, b, a)


def _nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None, iou_threshold: float
) -> torch.Tensor:
    """torchvision's CPU NMS loop; with ``idxs``, boxes suppress only boxes of their category."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    data = boxes.numpy()[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(data[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    cats = None if idxs is None else idxs.numpy()[order]
    zero = data.dtype.type(0)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for p in range(n):
        if suppressed[p]:
            continue
        keep.append(p)
        rest = slice(p + 1, n)
        if cats is not None:  # only the boxes of this category matter
            same = np.flatnonzero(cats[rest] == cats[p]) + p + 1
            if len(same) == 0:
                continue
            rest = same
        w = _select_min(x2[p], x2[rest]) - _select_max(x1[p], x1[rest])
        h = _select_min(y2[p], y2[rest]) - _select_max(y1[p], y1[rest])
        inter = _select_max(zero, w) * _select_max(zero, h)
        iou = inter / (areas[p] + areas[rest] - inter)
        # torchvision compares the float IoU with the double threshold.
        suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    return torch.from_numpy(order[np.array(keep, dtype=np.int64)].astype(np.int64))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    _check_boxes("nms", boxes, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nms(boxes, scores, None, iou_threshold)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    n = _check_boxes("batched_nms", boxes, scores)
    _check_dtype("batched_nms", "idxs", idxs, (torch.int64,), "int64")
    if idxs.dim() != 1 or idxs.shape[0] != n:
        raise ValueError(f"batched_nms: idxs must have shape ({n},), got {list(idxs.shape)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nms(boxes, scores, idxs, iou_threshold)


# ---- connected components ------------------------------------------------------------------


class _Components:
    """8-connected components of ``fg`` (bool N x H x W) found on row runs.

    Runs are in raster order (mask, row, start); ``root[r]`` is the lowest run index of the
    component of run ``r``; components are numbered per mask in OpenCV's label order: by
    the first 2 x 2 block (block rows, then block columns) that they touch, as OpenCV's
    block-based (Spaghetti) labelling finds them.
    """

    def __init__(self, fg: np.ndarray) -> None:
        n, h, w = fg.shape
        self.shape = (n, h, w)
        mask_ids, rows, starts, ends = self._runs(fg)
        self.mask = mask_ids
        self.length = ends - starts
        self.root = self._union(mask_ids, rows, starts, ends, h, w)
        # Per component (indexed by root run): mask, size and OpenCV ordering key.
        roots, self.run_component = np.unique(self.root, return_inverse=True)
        num = len(roots)
        self.component_mask = mask_ids[roots]
        self.size = np.bincount(self.run_component, weights=self.length, minlength=num).astype(
            np.int64
        )
        block_w = (w + 1) // 2
        block_key = (rows // 2).astype(np.int64) * block_w + starts // 2
        key = np.full(num, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(key, self.run_component, block_key)
        self.key = key
        order = np.lexsort((key, self.component_mask))
        first = np.searchsorted(self.component_mask[order], self.component_mask[order])
        rank = np.empty(num, dtype=np.int64)
        rank[order] = np.arange(num) - first  # 0-based label within its mask
        self.label = rank + 1
        self.count = np.bincount(self.component_mask, minlength=n)

    @staticmethod
    def _runs(fg: np.ndarray):
        n, h, w = fg.shape
        empty = np.zeros(0, dtype=np.int64)
        parts = [(empty, empty, empty, empty)]
        step = max(1, _CHUNK_PIXELS // max(1, h * (w + 2)))
        for begin in range(0, n, step):
            chunk = fg[begin : begin + step]
            padded = np.zeros((len(chunk), h, w + 2), dtype=np.int8)
            padded[..., 1:-1] = chunk
            m, y, x = np.nonzero(np.diff(padded, axis=-1))  # raster order: start, end, ...
            parts.append((m[0::2] + begin, y[0::2], x[0::2], x[1::2]))
        return tuple(np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(4))

    @staticmethod
    def _union(m, y, s, e, h, w) -> np.ndarray:
        """Lowest run index of each run's component."""
        num = len(s)
        label = np.arange(num, dtype=np.int64)
        if num == 0:
            return label
        g = m * (h + 1) + y  # a gap row between masks: no links across them
        key_s, key_e = g * (w + 1) + s, g * (w + 1) + e
        above = (g - 1) * (w + 1)
        lo = np.searchsorted(key_e, above + s, "left")  # first run above with end >= s
        hi = np.searchsorted(key_s, above + e, "right")  # past the last with start <= e
        count = np.maximum(hi - lo, 0)
        b = np.repeat(np.arange(num), count)
        a = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        a += np.repeat(lo, count)
        while len(a):
            la, lb = label[a], label[b]
            low = np.minimum(la, lb)
            new = label.copy()
            np.minimum.at(new, la, low)  # hook roots onto the lower root
            np.minimum.at(new, lb, low)
            while True:  # pointer jumping to the roots
                jumped = new[new]
                if np.array_equal(jumped, new):
                    break
                new = jumped
            if np.array_equal(new, label):
                break
            label = new
            keep = label[a] != label[b]
            a, b = a[keep], b[keep]
        return label

    def paint(self, fg: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
        """Writes ``values[component]`` on the pixels of every run into ``out`` (flat)."""
        out.reshape(-1)[np.flatnonzero(fg)] = np.repeat(values[self.run_component], self.length)


def _as_batch(masks: torch.Tensor) -> np.ndarray:
    fg = np.ascontiguousarray((masks != 0).numpy())  # `paint` writes through reshape(-1)
    return fg[None] if fg.ndim == 2 else fg


def _chunks(n: int, h: int, w: int):
    """Slices of at most ~_CHUNK_PIXELS pixels (whole masks) that bound temporary memory."""
    step = max(1, _CHUNK_PIXELS // max(1, h * w))
    return [slice(begin, begin + step) for begin in range(0, n, step)]


def connected_components(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_masks("connected_components", masks)
    fg = _as_batch(masks)
    labels = np.zeros(fg.shape, dtype=np.int32)
    counts = np.zeros(fg.shape[0], dtype=np.int64)
    for part in _chunks(*fg.shape):
        comps = _Components(fg[part])
        comps.paint(fg[part], comps.label.astype(np.int32), labels[part])
        counts[part] = comps.count + 1
    num_labels = torch.from_numpy(counts)
    if masks.dim() == 2:
        return torch.from_numpy(labels[0]), num_labels[0]
    return torch.from_numpy(labels), num_labels


def _remove_small(fg: np.ndarray, area_thresh: float, holes: bool, out: np.ndarray) -> np.ndarray:
    """Writes the result for masks ``fg`` into ``out``; returns their ``changed`` flags."""
    n = fg.shape[0]
    working = ~fg if holes else fg
    comps = _Components(working)
    small = comps.size < area_thresh
    changed = np.bincount(comps.component_mask[small], minlength=n) > 0
    out[...] = fg
    if holes:
        comps.paint(working, small, out)  # small background regions become foreground
        return changed
    keep = ~small
    # A changed mask whose regions are all small keeps its largest (lowest label on ties).
    kept_per_mask = np.bincount(comps.component_mask[keep], minlength=n)
    order = np.lexsort((comps.key, -comps.size, comps.component_mask))
    firsts = order[np.unique(comps.component_mask[order], return_index=True)[1]]
    largest = firsts[kept_per_mask[comps.component_mask[firsts]] == 0]
    keep[largest] = True
    keep |= ~changed[comps.component_mask]  # unchanged masks keep everything
    comps.paint(working, keep, out)
    return changed


def remove_small_regions(
    masks: torch.Tensor, area_thresh: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "remove_small_regions"
    if mode not in _MODES:
        raise ValueError(f"{op}: mode must be 'holes' or 'islands', got '{mode}'")
    _check_masks(op, masks)
    fg = _as_batch(masks)
    out = np.empty(fg.shape, dtype=bool)
    changed = np.zeros(fg.shape[0], dtype=bool)
    for part in _chunks(*fg.shape):
        changed[part] = _remove_small(fg[part], area_thresh, mode == "holes", out[part])
    result, flags = torch.from_numpy(out), torch.from_numpy(changed)
    if masks.dim() == 2:
        return result[0], flags[0]
    return result, flags
