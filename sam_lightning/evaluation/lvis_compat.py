"""LVIS mask AP with the official ``lvis`` package (0.5.3), on current NumPy.

``lvis`` is the reference for LVIS AP (federated evaluation: detections of categories an
image is not labelled for are dropped, unmatched detections of its not-exhaustively
labelled categories are ignored, 300 detections per image). It is used unchanged, with two
compatibility measures scoped to each evaluation:

- its ``accumulate`` calls ``np.float``, which NumPy 1.24 removed: while :func:`lvis_mask_ap`
  runs, the ``np`` that ``lvis.eval`` sees is NumPy plus that one alias (the builtin
  ``float``, which it always was). NumPy itself is not touched;
- ``LVISResults`` logs a deprecated ``Logger.warn`` "assuming the results are in the correct
  format" for results given as a list; they are validated here, and the message is muted.

Install it with ``pip install lvis==0.5.3 --no-deps`` (its declared dependencies pull
``opencv-python``); it imports ``cv2`` and ``matplotlib`` at import time, so those (e.g.
``opencv-python-headless``) must be installed too. Its class-agnostic mode (``use_cats=0``)
is broken; class-agnostic AR lives in :func:`sam_lightning.evaluation.coco_metrics.proposal_ar`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

#: The metrics of :func:`lvis_mask_ap` -> the ``lvis`` result keys they are read from.
METRICS = {
    "ap": "AP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "APs",
    "ap_medium": "APm",
    "ap_large": "APl",
    "ap_rare": "APr",
    "ap_common": "APc",
    "ap_frequent": "APf",
}
#: Detections per image that LVIS evaluates (the official value).
MAX_DETS = 300


def _import_lvis() -> types.ModuleType:
    try:
        import lvis
        import lvis.eval  # noqa: F401  (lvis.eval.np is what the compatibility layer swaps)
    except ImportError as error:
        raise ImportError(
            "LVIS AP needs the lvis package: pip install lvis==0.5.3 --no-deps, plus "
            f"opencv-python-headless and matplotlib, which it imports ({error})"
        ) from error
    return lvis


class _NumpyWithAliases(types.ModuleType):
    """NumPy as seen by ``lvis.eval``: every attribute of NumPy, plus the aliases it
    removed in 1.24 that lvis 0.5.3 still uses."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


_SWAP = threading.Lock()


@contextlib.contextmanager
def numpy_compat() -> Iterator[None]:
    """While active, ``lvis.eval`` runs on current NumPy (see the module docstring). One
    thread at a time: concurrent evaluations wait, so none restores NumPy under another."""
    module = _import_lvis().eval
    with _SWAP:
        original = module.np
        module.np = _NumpyWithAliases("numpy")
        try:
            yield
        finally:
            module.np = original


@contextlib.contextmanager
def _quiet_results_logger() -> Iterator[None]:
    logger = logging.getLogger("lvis.results")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The 'warn' method is deprecated", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def lvis_mask_ap(
    ground_truth: str | os.PathLike[str],
    results: Sequence[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    max_dets: int = MAX_DETS,
) -> dict[str, float]:
    """LVIS mask AP of COCO-format ``results`` (compressed-RLE ``segmentation``, ``score``,
    ``category_id``, ``image_id``; not modified) against an LVIS v1 file, computed by
    ``lvis.LVISEval``: the keys of :data:`METRICS` (-1 where a group has no ground truth).

    A result's ``bbox`` is dropped first, as detectron2 does: ``LVISResults`` would take the
    box area instead of the mask area for the area ranges. ``image_ids`` restricts the
    evaluation to those images (default: all images of the file).
    """
    if not results:
        raise ValueError("no results to evaluate (lvis cannot evaluate an empty list)")
    lvis = _import_lvis()
    gt = lvis.LVIS(os.fspath(ground_truth))
    known = set(gt.get_img_ids())
    copies = []
    for k, result in enumerate(results):
        segmentation = result.get("segmentation")
        if not isinstance(segmentation, Mapping) or not isinstance(
            segmentation.get("counts"), (str, bytes)
        ):
            raise ValueError(f"results[{k}].segmentation must be a compressed RLE")
        if result.get("image_id") not in known:
            raise ValueError(f"results[{k}]: image {result.get('image_id')} is not in the file")
        copies.append({key: value for key, value in result.items() if key != "bbox"})
    with _quiet_results_logger():
        dt = lvis.LVISResults(gt, copies, max_dets=max_dets)
    evaluator = lvis.LVISEval(gt, dt, iou_type="segm")
    if image_ids is not None:
        image_ids = sorted(set(image_ids))
        if not set(image_ids) <= known:
            raise ValueError(f"image_ids {sorted(set(image_ids) - known)[:5]} are not in the file")
        evaluator.params.img_ids = image_ids
    with numpy_compat():
        evaluator.run()
    values = evaluator.get_results()
    return {name: float(values[key]) for name, key in METRICS.items()}
