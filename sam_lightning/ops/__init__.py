"""Compiled operators of sam_lightning, with reference fallbacks.

Every function dispatches to ``torch.ops.sam_lightning.*`` when the compiled extension is
loaded (see :mod:`sam_lightning.ops._extension`) and to a pure Python/NumPy reference
implementation otherwise.
"""

from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR

if HAS_EXTENSION:
    from sam_lightning.ops import _fake  # noqa: F401  (registers the fake kernels)

from sam_lightning.ops.edges import (
    boundary_pr_counts,
    bsds_thresholds,
    correspond_pixels,
    edge_nms,
    edge_orientation,
    thin,
)
from sam_lightning.ops.postprocess import (
    batched_nms,
    connected_components,
    masks_to_boxes,
    nms,
    remove_small_regions,
    stability_score,
)
from sam_lightning.ops.rle import (
    rle_area,
    rle_compress,
    rle_decode,
    rle_decompress,
    rle_encode,
    rle_iou,
    rle_merge,
    rle_to_bbox,
)

__all__ = [
    "HAS_EXTENSION",
    "LOAD_ERROR",
    "batched_nms",
    "connected_components",
    "masks_to_boxes",
    "nms",
    "remove_small_regions",
    "stability_score",
    "rle_area",
    "rle_compress",
    "rle_decode",
    "rle_decompress",
    "rle_encode",
    "rle_iou",
    "rle_merge",
    "rle_to_bbox",
    "boundary_pr_counts",
    "bsds_thresholds",
    "correspond_pixels",
    "edge_nms",
    "edge_orientation",
    "thin",
]
