"""The BSDS500 boundary benchmark, as the BSDS benchmark and Dollar's edges toolbox define it.

Per image (``edgesEvalImg`` / ``evaluation_bdry_image``): for each of K thresholds
(``linspace(1/(K+1), 1 - 1/(K+1), K)``, K = 99), the edge map (values in [0, 1]; PNG files
are read as ``value / 255``) is binarised at ``E >= max(eps, t)``, thinned
(``bwmorph(..., 'thin', Inf)``) and matched against each annotator's boundaries within
``0.0075`` times the image diagonal; recall counts (cntR, sumR) are summed over annotators
and a predicted pixel counts as correct (cntP of sumP) when it matches any annotator. The
matching is :func:`sam_lightning.ops.correspond_pixels`: deterministic and maximum, where
Berkeley's randomised matcher matches slightly fewer pairs (see :mod:`sam_lightning.ops.edges`).

Over the dataset (``edgesEvalDir``):

* ODS: the best F of the dataset-wide precision/recall curve, linearly interpolated
  between neighbouring thresholds (100 points per segment, ``findBestRPF``);
* OIS: precision and recall summed over the images at each image's best threshold (first
  maximum of its F, no interpolation), then F;
* AP: the mean of the precision interpolated at recall ``0, 0.01, ..., 1`` inside the
  recall range of the curve, divided by 100 as the toolbox does (points with equal recall
  keep the first threshold's, as MATLAB's ``unique``);
* R50: the recall interpolated at precision ``max(0.5, lowest precision)`` (NaN when the
  precision never reaches 0.5).

``P = cntP / max(eps, sumP)``, ``R = cntR / max(eps, sumR)``, ``F = 2PR / max(eps, P + R)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam_lightning import ops
from sam_lightning.ops.edges import BSDS_MAX_DIST

#: The benchmark's number of thresholds.
NUM_THRESHOLDS = 99
_EPS = float(np.finfo(np.float64).eps)


@dataclass
class BoundaryResult:
    """Benchmark scores of a set of edge maps.

    ``thresholds``, ``recall``, ``precision`` and ``f`` are the dataset-wide curve (one value
    per threshold); ``per_image`` holds each image's name and its interpolated best
    threshold, recall, precision and F (the toolbox's ``eval_bdry_img.txt``); ``counts`` the
    ``N x K x 4`` counts (cntR, sumR, cntP, sumP) everything is computed from.
    """

    ods: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ois: float
    ois_recall: float
    ois_precision: float
    ap: float
    r50: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    counts: np.ndarray
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat scores: ``ods``, ``ois``, ``ap``, ``r50`` and the recall, precision and
        threshold behind ODS and OIS."""
        names = (
            "ods", "ods_threshold", "ods_recall", "ods_precision",
            "ois", "ois_recall", "ois_precision", "ap", "r50",
        )  # fmt: skip
        return {name: float(getattr(self, name)) for name in names}


def compute_rpf(
    cnt_r: np.ndarray, sum_r: np.ndarray, cnt_p: np.ndarray, sum_p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall, precision and F from counts (the toolbox's ``computeRPF``)."""
    recall = np.asarray(cnt_r, np.float64) / np.maximum(_EPS, sum_r)
    precision = np.asarray(cnt_p, np.float64) / np.maximum(_EPS, sum_p)
    f = 2 * precision * recall / np.maximum(_EPS, precision + recall)
    return recall, precision, f


def find_best_rpf(
    thresholds: np.ndarray, recall: np.ndarray, precision: np.ndarray
) -> tuple[float, float, float, float]:
    """``(recall, precision, f, threshold)`` of the best F along the curve, linearly
    interpolated at 100 points between each pair of neighbouring thresholds
    (``findBestRPF``: the first maximum of a segment, a later segment only if strictly
    better)."""
    t, r, p = (np.asarray(a, np.float64) for a in (thresholds, recall, precision))
    if len(t) == 1:
        f = 2 * p[0] * r[0] / max(_EPS, p[0] + r[0])
        return float(r[0]), float(p[0]), float(f), float(t[0])
    a = np.linspace(0, 1, 100)
    b = 1 - a
    rj = r[1:, None] * a + r[:-1, None] * b
    pj = p[1:, None] * a + p[:-1, None] * b
    tj = t[1:, None] * a + t[:-1, None] * b
    fj = 2 * pj * rj / np.maximum(_EPS, pj + rj)
    best = fj.argmax(1)  # first maximum within each segment
    segment = int(np.argmax(fj[np.arange(len(best)), best]))  # first segment with the max
    k = (segment, best[segment])
    return float(rj[k]), float(pj[k]), float(fj[k]), float(tj[k])


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> tuple[float, float]:
    """AP and R50 of a curve as ``edgesEvalDir`` computes them."""
    unique_r, first = np.unique(recall, return_index=True)
    order = first[::-1]  # the toolbox keeps the points in order of decreasing recall
    r, p = recall[order], precision[order]
    ap = 0.0
    if len(unique_r) > 1:
        queries = np.arange(101) / 100
        inside = (queries >= unique_r[0]) & (queries <= unique_r[-1])
        ap = float(np.interp(queries[inside], unique_r, p[::-1]).sum() / 100)
    unique_p, first_p = np.unique(p, return_index=True)
    at = max(float(unique_p[0]), 0.5)
    if at > unique_p[-1]:
        return ap, math.nan
    return ap, float(np.interp(at, unique_p, r[first_p]))


def summarize(
    counts: np.ndarray, thresholds: np.ndarray, names: Sequence[str] | None = None
) -> BoundaryResult:
    """Dataset scores (ODS, OIS, AP, R50) from per-image counts ``N x K x 4`` (cntR, sumR,
    cntP, sumP at each of the K ``thresholds``), as ``edgesEvalDir`` collects them."""
    counts = np.asarray(counts, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[2] != 4 or counts.shape[1] != len(thresholds):
        raise ValueError(
            f"counts must be N x {len(thresholds)} x 4 (images x thresholds x [cntR, sumR, "
            f"cntP, sumP]), got shape {list(counts.shape)}"
        )
    if counts.shape[0] == 0:
        raise ValueError("counts must hold at least one image")
    names = list(names) if names is not None else [str(i) for i in range(len(counts))]
    per_image, ois_counts = [], np.zeros(4)
    for name, image in zip(names, counts):
        r, p, f = compute_rpf(*image.T)
        ois_counts += image[int(np.argmax(f))]
        best_r, best_p, best_f, best_t = find_best_rpf(thresholds, r, p)
        per_image.append(
            {"name": name, "threshold": best_t, "recall": best_r, "precision": best_p, "f": best_f}
        )
    recall, precision, f = compute_rpf(*counts.sum(0).T)
    ods_r, ods_p, ods_f, ods_t = find_best_rpf(thresholds, recall, precision)
    ois_r, ois_p, ois_f = (float(v) for v in compute_rpf(*ois_counts))
    ap, r50 = _average_precision(recall, precision)
    return BoundaryResult(
        ods=ods_f, ods_threshold=ods_t, ods_recall=ods_r, ods_precision=ods_p,
        ois=ois_f, ois_recall=ois_r, ois_precision=ois_p, ap=ap, r50=r50,
        thresholds=thresholds, recall=recall, precision=precision, f=f,
        counts=counts.astype(np.int64), per_image=per_image,
    )  # fmt: skip


def as_edge_map(edges: np.ndarray | torch.Tensor) -> np.ndarray:
    """An ``H x W`` edge map as float64 in [0, 1]: uint8 maps are divided by 255 (as the
    benchmark reads PNG files), floating maps must already lie in [0, 1]."""
    array = edges.detach().cpu().numpy() if isinstance(edges, torch.Tensor) else np.asarray(edges)
    if array.ndim != 2:
        raise ValueError(f"edges must be an H x W map, got shape {list(array.shape)}")
    if array.dtype == np.uint8:
        return array / 255.0
    if array.dtype.kind != "f":
        raise ValueError(f"edges must be uint8 or floating point, got {array.dtype}")
    if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise ValueError("floating-point edges must lie in [0, 1]")
    return array.astype(np.float64)


def evaluate_image(
    edges: np.ndarray | torch.Tensor,
    boundaries: np.ndarray | torch.Tensor,
    thresholds: int | Sequence[float] = NUM_THRESHOLDS,
    max_dist: float = BSDS_MAX_DIST,
    thin: bool = True,
) -> np.ndarray:
    """Counts (``K x 4``: cntR, sumR, cntP, sumP) of one edge map (see :func:`as_edge_map`)
    against the annotators' boundary maps ``A x H x W``."""
    e = as_edge_map(edges)
    gt = boundaries.cpu().numpy() if isinstance(boundaries, torch.Tensor) else boundaries
    gt = np.asarray(gt)
    if gt.ndim != 3 or gt.shape[1:] != e.shape:
        raise ValueError(
            f"boundaries must be A x {e.shape[0]} x {e.shape[1]} (annotators x the edge map's "
            f"size), got shape {list(gt.shape)}"
        )
    return ops.boundary_pr_counts(e, gt != 0, thresholds, max_dist, thin).numpy()


def evaluate_boundaries(
    samples: Iterable[tuple[str, np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]],
    thresholds: int | Sequence[float] = NUM_THRESHOLDS,
    max_dist: float = BSDS_MAX_DIST,
    thin: bool = True,
    progress: bool = False,
    total: int | None = None,
) -> BoundaryResult:
    """Benchmark scores of ``(name, edges, boundaries)`` samples: edge maps of any detector
    (``H x W``, uint8 or [0, 1] floats) with their annotators' boundaries (``A x H x W``)."""
    values = ops.bsds_thresholds(thresholds) if isinstance(thresholds, int) else thresholds
    values = np.asarray(values, dtype=np.float64)
    names, counts = [], []
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, total=total, desc="BSDS boundaries", unit="image")
    for name, edges, boundaries in iterator:
        counts.append(evaluate_image(edges, boundaries, values, max_dist, thin))
        names.append(name)
    if not counts:
        raise ValueError("no images to evaluate")
    return summarize(np.stack(counts), values, names)


def read_edge_map(path: str | os.PathLike[str]) -> np.ndarray:
    """An 8-bit grayscale PNG edge map as float64 ``value / 255``."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "P", "1", "I;16", "I"):
            image = image.convert("L")
        array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: edge maps must be 8-bit PNG files, got {array.dtype} pixels")
    return array / 255.0


def write_edge_map(path: str | os.PathLike[str], edges: np.ndarray) -> None:
    """Writes a [0, 1] edge map as an 8-bit PNG (``round(255 * edges)``, MATLAB's uint8),
    atomically."""
    from PIL import Image

    from sam_lightning.file_io import atomic_path

    array = as_edge_map(edges)
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(array * 255).astype(np.uint8)).save(tmp, format="PNG")


def plot_pr_curve(
    result: BoundaryResult, path: str | os.PathLike[str], label: str = "edges"
) -> None:
    """Writes the precision-recall curve with the ODS point and iso-F contours (as the
    benchmark's plots), in any format matplotlib infers from ``path``. Needs matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the precision-recall plot needs matplotlib (pip install matplotlib)"
        ) from error
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    for level in np.arange(0.1, 1.0, 0.1):  # iso-F curves p = F r / (2 r - F), from p = 1
        r = np.linspace(level / (2 - level), 1, 200)
        axes.plot(r, level * r / (2 * r - level), color="0.85", linewidth=0.8)
    keep = result.recall > 0
    name = f"{label} [F={result.ods:.3f}]"
    axes.plot(result.recall[keep], result.precision[keep], linewidth=2, label=name)
    axes.plot(result.ods_recall, result.ods_precision, "o", color="C3")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="Recall", ylabel="Precision", aspect="equal")
    axes.set_title(f"ODS {result.ods:.3f}  OIS {result.ois:.3f}  AP {result.ap:.3f}")
    axes.legend(loc="lower left")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
