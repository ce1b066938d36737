"""Edge-detection operators and the per-image step of the BSDS boundary benchmark.

* :func:`thin`: scikit-image's ``morphology.thin`` (= MATLAB ``bwmorph(bw, 'thin', Inf)``),
  identical results.
* :func:`edge_orientation` and :func:`edge_nms`: the edge NMS of Dollar's Structured Edge
  toolbox (``edgesDetect``: orientation from second derivatives of the triangle-smoothed
  edge map, then ``edgesNmsMex``), as SAM's zero-shot edge detection applies it (paper
  App. D.2).
* :func:`correspond_pixels`: the BSDS ``correspondPixels`` task, matching predicted to
  ground-truth boundary pixels within ``max_dist`` times the image diagonal, each pixel at
  most once; deterministic and maximum (see below).
* :func:`boundary_pr_counts`: ``edgesEvalImg`` of the edges toolbox (the BSDS benchmark's
  ``evaluation_bdry_image``) for one image: cntR, sumR, cntP, sumP per threshold.

The matching differs from the Berkeley matcher on purpose. Berkeley's ``correspondPixels``
solves a min-cost assignment (CSA) in which unmatched pixels pair with outlier nodes through
randomly drawn edges (6 per node, seeded from the clock): results vary between runs and,
when the random outlier edges cannot absorb the unmatched pixels cheaply, it matches a few
pairs fewer than possible. Ours returns a maximum matching (Hopcroft-Karp) that starts from a
greedy nearest-first matching and tries nearer candidates first, with every tie broken by
row-major pixel order and (dy, dx) offset order, so it is deterministic; it prefers short
pairs where that costs no pair, but does not minimise the total distance as CSA does. Which
pixels are matched (not how many) affects precision, since a predicted pixel counts once
if it matches any annotator. ``tools/bench_bsds.py`` and ``tests/evaluation`` measure the
difference against pyEdgeEval's copy of the Berkeley code.

Every function runs the compiled ``torch.ops.sam_lightning`` kernels when the extension is
loaded, else :mod:`sam_lightning.ops._edges_reference` (same results, much slower matching).
Inputs may be NumPy arrays or tensors with any strides; CUDA tensors are processed on the
CPU and results returned on the input's device. Bad inputs raise ``ValueError`` naming the
argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sam_lightning.ops import _edges_reference
from sam_lightning.ops._extension import HAS_EXTENSION
from sam_lightning.ops.postprocess import Array, _tensor


def _compiled_kernels_loaded() -> bool:
    # An extension built before these operators existed lacks them.
    return HAS_EXTENSION and hasattr(torch.ops.sam_lightning, "boundary_pr_counts")


# The kernels behind the public functions (tests swap in the reference backend).
_KERNELS = torch.ops.sam_lightning if _compiled_kernels_loaded() else _edges_reference

#: Matching distance of the BSDS benchmark, as a fraction of the image diagonal.
BSDS_MAX_DIST = 0.0075


def thin(masks: Array) -> torch.Tensor:
    """Thinned bool/uint8 masks ``[N, H, W]`` or ``[H, W]`` (nonzero = foreground): bool.

    Exactly ``skimage.morphology.thin`` on each mask: Guo and Hall's two-subiteration
    parallel thinning until an iteration deletes nothing, pixels outside the image counting
    as background.
    """
    tensor, device = _tensor("masks", masks)
    return _KERNELS.thin(tensor).to(device)


def _conv_tri(image: np.ndarray, radius: int) -> np.ndarray:
    """Piotr's toolbox ``convTri`` for an integer radius: separable triangle filter
    ``[1 .. r+1 .. 1] / (r+1)^2`` with symmetric (edge-repeating) padding."""
    if radius == 0:
        return image
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)])
    kernel = kernel / (radius + 1) ** 2
    padded = np.pad(image, radius, mode="symmetric")
    h, w = image.shape
    rows = sum(k * padded[i : i + h, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


def edge_orientation(edges: Array, smoothing: int = 4) -> torch.Tensor:
    """Edge orientation (radians in [0, pi)) of an ``H x W`` edge map as ``edgesDetect``
    computes it: ``mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)`` with the second
    derivatives (MATLAB ``gradient``: central differences, one-sided at the borders) of
    ``convTri(edges, smoothing)``. Computed in float64, returned in the dtype of ``edges``
    (float32 or float64)."""
    tensor, device = _tensor("edges", edges)
    if tensor.dtype not in (torch.float32, torch.float64) or tensor.dim() != 2:
        raise ValueError(
            f"edge_orientation: edges must be a float32 or float64 H x W tensor, got "
            f"{tensor.dtype} with shape {list(tensor.shape)}"
        )
    if min(tensor.shape) < 2:
        raise ValueError(
            f"edge_orientation: edges must be at least 2 x 2, got {list(tensor.shape)}"
        )
    if smoothing < 0:
        raise ValueError(f"edge_orientation: smoothing must be >= 0, got {smoothing}")
    smooth = _conv_tri(tensor.numpy().astype(np.float64), int(smoothing))
    oy, ox = np.gradient(smooth)
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    orientation = np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)
    return torch.from_numpy(orientation.astype(tensor.numpy().dtype)).to(device)


def edge_nms(
    edges: Array,
    orientation: Array | None = None,
    radius: int = 1,
    border: int = 5,
    multiplier: float = 1.01,
) -> torch.Tensor:
    """Non-maximum suppression of an ``H x W`` float32/float64 edge map (``edgesNmsMex``).

    A pixel is zeroed when ``multiplier`` times its value is below the bilinearly
    interpolated edge value at any distance ``d = 1..radius`` either side along its
    ``orientation`` (radians; default :func:`edge_orientation` of ``edges``), positions
    clamped to ``[0, size - 1.001]``. Then the ``border`` pixels nearest each side are
    faded linearly (pixel ``i`` from the side is multiplied by ``i / border``). The defaults
    are ``edgesDetect``'s (r=1, s=5, m=1.01). Computed in the dtype of ``edges``.
    """
    tensor, device = _tensor("edges", edges)
    if orientation is None:
        orientation = edge_orientation(tensor)
    orientation_tensor, _ = _tensor("orientation", orientation)
    return _KERNELS.edge_nms(
        tensor, orientation_tensor, int(radius), int(border), float(multiplier)
    ).to(device)


def correspond_pixels(
    pred: Array, gt: Array, max_dist: float = BSDS_MAX_DIST
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matches the boundary pixels of two bool/uint8 ``H x W`` maps (nonzero = boundary).

    Pixels at most ``max_dist * sqrt(H^2 + W^2)`` apart can match, each pixel at most once;
    the number of pairs is the largest possible (see the module docstring for how ties are
    broken and how this differs from Berkeley's ``correspondPixels``). Returns
    ``(match_pred, match_gt)``: int64 ``H x W`` maps holding, at each matched boundary
    pixel, the row-major index ``y * W + x`` of its partner in the other map, and -1
    elsewhere.
    """
    pred_tensor, device = _tensor("pred", pred)
    gt_tensor, _ = _tensor("gt", gt)
    match_pred, match_gt = _KERNELS.correspond_pixels(pred_tensor, gt_tensor, float(max_dist))
    return match_pred.to(device), match_gt.to(device)


def bsds_thresholds(count: int = 99) -> torch.Tensor:
    """The benchmark's thresholds, MATLAB's ``linspace(1/(K+1), 1 - 1/(K+1), K)``
    (``d1 + k * (d2 - d1) / (K - 1)`` with exact end points), float64."""
    if count < 1:
        raise ValueError(f"the number of thresholds must be >= 1, got {count}")
    first, last = 1 / (count + 1), 1 - 1 / (count + 1)
    if count == 1:
        return torch.tensor([last], dtype=torch.float64)
    k = np.arange(count, dtype=np.float64)
    values = first + k * (last - first) / (count - 1)
    values[0], values[-1] = first, last
    return torch.from_numpy(values)


def _thresholds(thresholds: int | Sequence[float] | Array) -> torch.Tensor:
    if isinstance(thresholds, (int, np.integer)) and not isinstance(thresholds, bool):
        return bsds_thresholds(int(thresholds))
    if isinstance(thresholds, (np.ndarray, torch.Tensor)):
        tensor, _ = _tensor("thresholds", thresholds)
    else:
        tensor = torch.tensor(list(thresholds), dtype=torch.float64)
    if not tensor.is_floating_point():
        raise ValueError(f"thresholds must be a count or floating-point values, got {tensor.dtype}")
    return tensor.to(torch.float64)


def boundary_pr_counts(
    edges: Array,
    ground_truth: Array,
    thresholds: int | Sequence[float] | Array = 99,
    max_dist: float = BSDS_MAX_DIST,
    thin: bool = True,
) -> torch.Tensor:
    """Boundary-benchmark counts of one image, as ``edgesEvalImg``: int64 ``[K, 4]``.

    For each threshold ``t`` (``thresholds``: a count K for :func:`bsds_thresholds`, or the
    values), the boundary map is ``edges >= max(eps, t)`` (float32/float64 ``H x W``; eps
    is MATLAB's 2^-52), thinned with :func:`thin` when ``thin`` is true, and matched with
    :func:`correspond_pixels` against each annotator's map in ``ground_truth``
    (bool/uint8 ``A x H x W``). Columns: cntR (ground-truth pixels matched, summed over
    annotators), sumR (ground-truth pixels, summed), cntP (predicted pixels matched to any
    annotator), sumP (predicted pixels). Thresholds run in parallel (torch's intra-op
    threads).
    """
    edge_tensor, _ = _tensor("edges", edges)
    gt_tensor, _ = _tensor("ground_truth", ground_truth)
    return _KERNELS.boundary_pr_counts(
        edge_tensor, gt_tensor, _thresholds(thresholds), float(max_dist), bool(thin)
    )
