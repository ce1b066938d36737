"""Inputs and oracles of the post-processing operator tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def smooth_logits(rng: np.random.Generator, n: int, h: int, w: int, scale: float = 3.0):
    """N x H x W float32 logits: upsampled low-resolution noise (blob-shaped masks)."""
    low = torch.from_numpy(rng.standard_normal((n, 1, max(h // 8, 2), max(w // 8, 2))))
    up = F.interpolate(low.float(), size=(h, w), mode="bilinear", align_corners=False)
    return up[:, 0] * scale


def random_masks(rng: np.random.Generator, n: int, h: int, w: int, kind: str) -> np.ndarray:
    """N x H x W bool masks of one kind: blobs, noise, sparse, dense, empty or full."""
    if kind == "blobs":
        return (smooth_logits(rng, n, h, w) > rng.uniform(-1, 1)).numpy()
    if kind == "empty":
        return np.zeros((n, h, w), dtype=bool)
    if kind == "full":
        return np.ones((n, h, w), dtype=bool)
    p = {"noise": 0.5, "sparse": 0.1, "dense": 0.9}[kind]
    return rng.random((n, h, w)) < p


MASK_KINDS = ["blobs", "noise", "sparse", "dense", "empty", "full"]


def torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list:
    """A line-by-line port of torchvision's CPU ``nms_kernel_impl`` (scalar arithmetic in
    the boxes' dtype, the IoU compared with the double threshold)."""
    b = boxes.numpy()
    order = torch.sort(scores, stable=True, descending=True).indices.tolist()
    areas = [(b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) for i in range(len(b))]
    zero = b.dtype.type(0)
    suppressed = [False] * len(b)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[position + 1 :]:
            if suppressed[j]:
                continue
            xx1, yy1 = max(b[i, 0], b[j, 0]), max(b[i, 1], b[j, 1])
            xx2, yy2 = min(b[i, 2], b[j, 2]), min(b[i, 3], b[j, 3])
            inter = max(zero, xx2 - xx1) * max(zero, yy2 - yy1)
            with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for empty boxes
                iou = inter / (areas[i] + areas[j] - inter)
            if float(iou) > iou_threshold:
                suppressed[j] = True
    return keep


def per_category_nms(boxes, scores, idxs, iou_threshold) -> list:
    """torchvision's ``_batched_nms_vanilla`` with a stable final sort."""
    keep = []
    for category in torch.unique(idxs).tolist():
        members = torch.where(idxs == category)[0]
        keep += members[torchvision_nms(boxes[members], scores[members], iou_threshold)].tolist()
    keep = torch.tensor(sorted(keep), dtype=torch.int64)  # ties in index order
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices].tolist()


def torchvision_shim():
    """``tests/reference_shims/torchvision/ops/boxes.py``: a Python stand-in for
    torchvision's NMS (it compares the IoU with the threshold in the boxes' dtype)."""
    path = Path(__file__).parents[1] / "reference_shims" / "torchvision" / "ops" / "boxes.py"
    spec = importlib.util.spec_from_file_location("torchvision_shim_boxes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
