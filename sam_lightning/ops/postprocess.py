"""Post-processing operators of the automatic mask generator.

Drop-in equivalents of ``segment_anything.utils.amg``'s ``calculate_stability_score``,
``batched_mask_to_box`` and ``remove_small_regions`` (OpenCV), torchvision's ``nms`` and
``batched_nms``, and OpenCV's 8-connected ``connectedComponents`` labels, with identical
results (deviations are listed in each docstring). Every function runs the compiled
``torch.ops.sam_lightning`` kernels when the extension is loaded, else
:mod:`sam_lightning.ops._postprocess_reference`. Inputs may have any strides and be NumPy
arrays; CUDA tensors are processed on the CPU and results returned on the input's device.
Bad inputs raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import numpy as np
import torch

from sam_lightning.ops import _postprocess_reference
from sam_lightning.ops._extension import HAS_EXTENSION


def _compiled_kernels_loaded() -> bool:
    # An extension built before these operators existed has the RLE ones only.
    return HAS_EXTENSION and hasattr(torch.ops.sam_lightning, "remove_small_regions")


# The kernels behind the public functions (tests swap in the reference backend).
_KERNELS = torch.ops.sam_lightning if _compiled_kernels_loaded() else _postprocess_reference

Array = torch.Tensor | np.ndarray


def _tensor(name: str, value: Array) -> tuple[torch.Tensor, torch.device]:
    """``value`` as a CPU tensor (no copy when possible) and the device to return results on."""
    if isinstance(value, np.ndarray):
        if any(stride < 0 for stride in value.strides):  # torch.from_numpy refuses these
            value = np.ascontiguousarray(value)
        value = torch.from_numpy(value)
    elif not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value)}")
    return value.cpu(), value.device


def stability_score(logits: Array, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """Stability score of mask logits ``[..., H, W]``: float32 ``[...]``.

    ``count(logits > mask_threshold + threshold_offset) / count(logits > mask_threshold -
    threshold_offset)``, bitwise as the official ``calculate_stability_score``: thresholds are
    rounded to the logits' dtype (float32, float64, float16 or bfloat16) as torch does when it
    compares a tensor with a Python number, 0 / 0 gives NaN, and per-row counts wrap at
    int16 as the official's ``sum(-1, dtype=torch.int16)`` does (rows wider than 32767).
    """
    tensor, device = _tensor("logits", logits)
    return _KERNELS.stability_score(tensor, float(mask_threshold), float(threshold_offset)).to(
        device
    )


def masks_to_boxes(masks: Array) -> torch.Tensor:
    """Boxes ``[x0, y0, x1, y1]`` (inclusive) of bool/uint8 masks ``[..., H, W]``: int64.

    Shape ``[..., 4]``, as the official ``batched_mask_to_box``; nonzero pixels are
    foreground and an empty mask gives ``[0, 0, 0, 0]``. Unlike the official, the result
    is int64 also for empty inputs (the official returns float32 zeros when
    ``masks.numel() == 0``) and uint8 values other than 0/1 count as foreground (the
    official would scale coordinates by them).
    """
    tensor, device = _tensor("masks", masks)
    return _KERNELS.masks_to_boxes(tensor).to(device)


def nms(boxes: Array, scores: Array, iou_threshold: float) -> torch.Tensor:
    """Indices (int64) of the boxes kept by non-maximum suppression, by decreasing score.

    torchvision's CPU ``nms``: a stable descending sort of ``scores``, then each kept box
    suppresses every later box whose IoU with it, computed in the boxes' dtype (float32 or
    float64, XYXY), is greater than ``iou_threshold`` (the float IoU compared in double, as
    torchvision's kernel does).
    """
    box_tensor, device = _tensor("boxes", boxes)
    score_tensor, _ = _tensor("scores", scores)
    return _KERNELS.nms(box_tensor, score_tensor, float(iou_threshold)).to(device)


def batched_nms(boxes: Array, scores: Array, idxs: Array, iou_threshold: float) -> torch.Tensor:
    """NMS within each category ``idxs`` (integers): kept indices, by decreasing score.

    Ties in score are in index order (stable). This is torchvision's per-category path
    (``_batched_nms_vanilla``, taken when ``boxes.numel() > 4000``) with a stable final
    sort. For fewer boxes torchvision shifts each category's boxes by ``idx * (max + 1)``
    and runs one NMS; that gives the same result whenever the shift changes no IoU (all
    ``idxs`` 0, as in the automatic mask generator, or shifts exact in floating point) and
    boxes of different categories do not overlap after the shift (not guaranteed with
    negative coordinates). Float ``idxs`` are accepted when they hold integers.
    """
    box_tensor, device = _tensor("boxes", boxes)
    score_tensor, _ = _tensor("scores", scores)
    idx_tensor, _ = _tensor("idxs", idxs)
    if idx_tensor.is_floating_point():
        integral = torch.isfinite(idx_tensor) & (idx_tensor == idx_tensor.round())
        if not bool(integral.all()):
            raise ValueError("batched_nms: idxs must hold integers (category ids)")
    if idx_tensor.dtype != torch.int64 and not idx_tensor.is_complex():
        idx_tensor = idx_tensor.to(torch.int64)
    return _KERNELS.batched_nms(box_tensor, score_tensor, idx_tensor, float(iou_threshold)).to(
        device
    )


def connected_components(masks: Array) -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of bool/uint8 masks ``[N, H, W]`` or ``[H, W]``.

    Returns ``(labels, num_labels)``: int32 labels of the masks' shape, identical to
    ``cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)[1]`` (background 0;
    components numbered by the first 2 x 2 pixel block they touch, block rows then block
    columns, as OpenCV's block-based labelling does), and the number of labels counting the
    background as OpenCV does (int64 ``[N]``, or a 0-d tensor for one ``[H, W]`` mask).
    """
    tensor, device = _tensor("masks", masks)
    labels, num_labels = _KERNELS.connected_components(tensor)
    return labels.to(device), num_labels.to(device)


def remove_small_regions(
    masks: Array, area_thresh: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``remove_small_regions`` on each bool/uint8 mask of ``[N, H, W]`` or ``[H, W]``.

    ``mode="holes"`` fills every 8-connected region of the background smaller than
    ``area_thresh`` (also regions touching the border); ``mode="islands"`` removes every
    8-connected foreground region smaller than ``area_thresh``, keeping the largest (lowest
    OpenCV label on ties) when all are small. Returns ``(masks, changed)``: bool masks of the
    input's shape and bool ``[N]`` (0-d for one mask), True exactly when the official
    returns True, i.e. when some region was small, even where the mask ends up unchanged.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"remove_small_regions: mode must be 'holes' or 'islands', got {mode!r}")
    tensor, device = _tensor("masks", masks)
    result, changed = _KERNELS.remove_small_regions(tensor, float(area_thresh), mode)
    return result.to(device), changed.to(device)
