"""COCO mask AP and class-agnostic mask AR (object proposals), computed as COCOeval does.

pycocotools' ``COCOeval`` is the reference. Three back-ends compute its ``precision`` and
``recall`` arrays (``tests/evaluation/test_coco_metrics.py`` checks each claim):

- ``native`` (:mod:`sam_lightning.evaluation.coco_native`): our vectorised re-implementation
  of ``evaluate`` + ``accumulate`` on the compiled RLE IoU; both arrays equal pycocotools'
  bit for bit, and so do all twelve statistics of ``COCOeval.summarize``. ``backend="auto"``
  uses it for :func:`mask_ap` / :func:`mask_stats` (9-11x pycocotools' speed on
  ``tools/bench_coco_eval.py``'s AP workload);
- ``faster_coco_eval`` (C++ matching and accumulation): its recall equals pycocotools' bit
  for bit, so ``backend="auto"`` uses it for :func:`proposal_ar`. (The native back-end is
  faster there too, but class-agnostic it accumulates every budget's proposals at once,
  several kB of arrays per proposal: too much for LVIS' 20 million.) Its precision differs
  from pycocotools' in the last bit: pycocotools divides by ``tp + fp + eps``, which differs
  from ``tp + fp`` only when ``tp + fp == 1`` (a ranking's first detection), so its
  precision there is ``1 - 2.2e-16`` where faster-coco-eval's is 1 and APs differ by up to
  ~2e-16;
- ``pycocotools`` itself.

All see the same inputs: a ground-truth document (COCO or LVIS v1 instances with unique
annotation ids; LVIS annotations get ``iscrowd: 0``, which COCOeval reads) and COCO results
with compressed-RLE ``segmentation`` and ``score``. A result's ``bbox`` is dropped before
evaluation, as detectron2 does: the COCO API would otherwise take the box area, not the mask
area, to place an unmatched detection in an area range. Summaries follow
``COCOeval.summarize``: the mean of the valid (> -1) entries, -1 where there are none (e.g.
no ground truth of that size).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from sam_lightning import ops
from sam_lightning.evaluation import coco_native
from sam_lightning.file_io import read_image

BACKENDS = ("auto", "native", "pycocotools", "faster_coco_eval")
#: What ``backend="auto"`` uses per metric (see the module docstring).
AUTO_BACKEND = {"ap": "native", "ar": "faster_coco_eval"}
AREAS = ("all", "small", "medium", "large")
#: Class-agnostic AR's detection budgets (SAM paper §7.3 reports AR@1000).
PROPOSAL_MAX_DETS = (100, 300, 1000)
#: The keys of :func:`mask_stats`, in the order of ``COCOeval.stats``.
MASK_STATS = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar@1",
    "ar@10",
    "ar@100",
    "ar@100_small",
    "ar@100_medium",
    "ar@100_large",
)
#: LVIS frequency groups: metric suffix -> the categories' ``frequency`` value.
FREQUENCY_GROUPS = {"frequent": "f", "common": "c", "rare": "r"}

Document = dict[str, Any]
Results = Sequence[Mapping[str, Any]]


# ----------------------------------------------------------- ground truth and images


def load_ground_truth(path: str | os.PathLike[str]) -> Document:
    """Reads a COCO or LVIS instances JSON file."""
    with open(path, "rb") as handle:
        document = json.load(handle)
    for field in ("images", "annotations", "categories"):
        if not isinstance(document, dict) or not isinstance(document.get(field), list):
            raise ValueError(f"{path}: not an instances file (no '{field}' list)")
    return document


def dataset_format(document: Mapping[str, Any]) -> str:
    """``"lvis"`` for an LVIS file (categories with ``frequency``, images with
    ``neg_category_ids``), else ``"coco"``."""
    categories, images = document.get("categories") or [], document.get("images") or []
    if any("frequency" in c for c in categories) or any("neg_category_ids" in i for i in images):
        return "lvis"
    return "coco"


def image_files(
    document: Mapping[str, Any], images: str | os.PathLike[str]
) -> list[tuple[dict[str, Any], Path]]:
    """Every image of ``document`` with its file under ``images``, as
    :class:`~sam_lightning.data.coco.LvisDataset` finds them: ``file_name`` for COCO; for
    LVIS (``coco_url`` only) ``images/<split>/<name>`` if it exists, else ``images/<name>``.
    """
    root = Path(images)
    files = []
    for info in document["images"]:
        url = info.get("coco_url")
        if url is None or "file_name" in info:
            files.append((info, root / info["file_name"]))
            continue
        split, name = PurePosixPath(urlparse(url).path).parts[-2:]
        path = root / split / name
        if not path.is_file() and (root / name).is_file():
            path = root / name
        files.append((info, path))
    return files


def check_image_files(files: Sequence[tuple[dict[str, Any], Path]]) -> None:
    """Raises FileNotFoundError, with a count and examples, if files of :func:`image_files`'
    output are missing (so that a run fails before it builds a model)."""
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(files)} image files not found, e.g. {', '.join(missing[:3])}"
        )


def read_images(
    files: Sequence[tuple[dict[str, Any], Path]], progress: bool = False, desc: str = "images"
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yields :func:`read_file` of each of :func:`image_files`' output, with a tqdm bar if
    ``progress``."""
    for index in tqdm(range(len(files)), desc=desc, disable=not progress):
        yield read_file(files, index)


def read_file(
    files: Sequence[tuple[dict[str, Any], Path]], index: int
) -> tuple[dict[str, Any], np.ndarray]:
    """``(image info, H x W x 3 uint8 RGB)`` of ``files[index]``. Raises ValueError for an
    image whose size is not the one the annotations give (its masks could not be
    evaluated)."""
    info, path = files[index]
    image = read_image(path)
    if image.shape[:2] != (info["height"], info["width"]):
        raise ValueError(
            f"{path} is {image.shape[0]}x{image.shape[1]} but image {info['id']} of the "
            f"annotations is {info['height']}x{info['width']} (height x width)"
        )
    return info, image


def resolve_format(requested: str | None, document: Mapping[str, Any]) -> str:
    """``data.format``: ``"coco"`` or ``"lvis"`` as given, or detected for ``"auto"``/None."""
    if requested in (None, "auto"):
        return dataset_format(document)
    if requested not in ("coco", "lvis"):
        raise ValueError(f"data.format must be auto, coco or lvis, got {requested!r}")
    return requested


def restrict_annotations(document: Mapping[str, Any], category_ids: Iterable[int]) -> Document:
    """``document`` with only the annotations of ``category_ids``; images and the category
    list are kept, so class-agnostic evaluation gathers detections as before."""
    keep = set(category_ids)
    annotations = [a for a in document["annotations"] if a["category_id"] in keep]
    return {**document, "annotations": annotations}


def frequency_groups(document: Mapping[str, Any]) -> dict[str, list[int]]:
    """Category ids per LVIS frequency group, ``{"frequent": [...], "common": ..., "rare":
    ...}``; raises ValueError if a category has no ``frequency``."""
    groups: dict[str, list[int]] = {name: [] for name in FREQUENCY_GROUPS}
    names = {code: name for name, code in FREQUENCY_GROUPS.items()}
    for category in document["categories"]:
        code = category.get("frequency")
        if code not in names:
            raise ValueError(f"category {category.get('id')} has no LVIS frequency (f, c or r)")
        groups[names[code]].append(category["id"])
    return groups


def _evaluation_copy(document: Mapping[str, Any]) -> Document:
    """A copy whose annotations the evaluators may annotate (they add ``ignore`` and replace
    polygons by RLEs), with ``iscrowd`` defaulted to 0 (LVIS has none). Raises ValueError if
    an annotation has no ``id`` or shares it with another (the COCO API would silently
    evaluate one of them twice)."""
    annotations = [{**a, "iscrowd": a.get("iscrowd", 0)} for a in document["annotations"]]
    seen: set[Any] = set()
    for k, ann in enumerate(annotations):
        if "id" not in ann:
            raise ValueError(f"annotations[{k}] has no 'id'")
        if ann["id"] in seen:
            raise ValueError(f"annotations[{k}]: id {ann['id']} is not unique")
        seen.add(ann["id"])
    return {**document, "annotations": annotations}


# ----------------------------------------------------------------------------- results


def _check_results(results: Results, image_ids: set[int]) -> None:
    """Raises ValueError unless every result has the fields of a COCO mask result, a
    compressed-RLE ``segmentation`` and an image of the ground truth."""
    for k, result in enumerate(results):
        for field in ("image_id", "category_id", "segmentation", "score"):
            if field not in result:
                raise ValueError(f"results[{k}] has no '{field}'")
        segmentation = result["segmentation"]
        if not isinstance(segmentation, Mapping) or not isinstance(
            segmentation.get("counts"), (str, bytes)
        ):
            raise ValueError(f"results[{k}].segmentation must be a compressed RLE")
        if result["image_id"] not in image_ids:
            raise ValueError(f"results[{k}]: image {result['image_id']} is not in the ground truth")


def _segm_results(results: Results) -> list[dict[str, Any]]:
    """Copies of COCO mask results without ``bbox`` (see the module docstring), which the
    external evaluators may annotate."""
    copies = [dict(result) for result in results]
    for result in copies:
        result.pop("bbox", None)
    return copies


def _faster_results(gt: Any, results: list[dict[str, Any]]) -> Any:
    """faster-coco-eval's ``loadRes`` for mask results, with the areas of all masks computed
    in one batch (``sam_lightning.ops``, pycocotools' numbers) instead of one call per
    result. (``loadRes`` also adds each mask's box, which mask evaluation never reads.)"""
    from faster_coco_eval import COCO

    areas = ops.rle_area([r["segmentation"] for r in results]).tolist() if results else []
    for index, (result, area) in enumerate(zip(results, areas)):
        result.update(area=area, id=index + 1, iscrowd=0)
    res = COCO()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": results,
    }
    res.createIndex()
    return res


# -------------------------------------------------------------------------- evaluation


def _resolve(backend: str, metric: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return AUTO_BACKEND[metric] if backend == "auto" else backend


def accumulate(
    ground_truth: Mapping[str, Any],
    results: Results,
    *,
    use_cats: bool,
    max_dets: Sequence[int],
    image_ids: Iterable[int] | None = None,
    backend: str = "native",
) -> tuple[np.ndarray, np.ndarray]:
    """Runs COCOeval (``iouType="segm"``) and returns its accumulated ``precision``
    (T x R x K x A x M) and ``recall`` (T x K x A x M) arrays.

    Args:
        ground_truth: COCO or LVIS instances document (not modified).
        results: COCO results with compressed-RLE ``segmentation`` (not modified).
        use_cats: per-category evaluation; ``False`` is class-agnostic (every detection may
            match every object; the detections' categories are then irrelevant).
        max_dets: the detection budgets per image (per category when ``use_cats``).
        image_ids: evaluate only these images (default: every image of the ground truth).
        backend: ``"native"``, ``"pycocotools"`` or ``"faster_coco_eval"``.
    """
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    document = _evaluation_copy(ground_truth)
    known = {image["id"] for image in document["images"]}
    _check_results(results, known)
    if image_ids is not None:
        image_ids = sorted(set(image_ids))
        unknown = [i for i in image_ids if i not in known]
        if unknown:
            raise ValueError(f"image_ids {unknown[:5]} are not in the ground truth")
    max_dets = sorted(int(m) for m in max_dets)
    cat_ids = sorted({c["id"] for c in document["categories"]})
    if not use_cats:  # class-agnostic COCOeval still gathers detections by these categories
        cat_ids = sorted(set(cat_ids) | {r["category_id"] for r in results})
    if backend == "native":
        return coco_native.evaluate(
            document,
            results,
            image_ids=sorted(known) if image_ids is None else image_ids,
            cat_ids=cat_ids,
            use_cats=use_cats,
            max_dets=max_dets,
        )
    copies = _segm_results(results)
    if backend == "pycocotools":
        evaluator = _pycocotools_evaluator(document, copies)
    else:
        evaluator = _faster_evaluator(document, copies)
    params = evaluator.params
    params.useCats, params.maxDets, params.catIds = int(use_cats), max_dets, cat_ids
    if image_ids is not None:
        params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"], evaluator.eval["recall"]


def _pycocotools_evaluator(document: Document, results: list[dict[str, Any]]) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = document
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list; no detection is a valid result
            dt = COCO()
            dt.dataset = {**document, "annotations": []}
            dt.createIndex()
        return COCOeval(gt, dt, "segm")


def _faster_evaluator(document: Document, results: list[dict[str, Any]]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(document)
    return COCOeval_faster(gt, _faster_results(gt, results), "segm", print_function=_quiet)


def _quiet(*_: Any, **__: Any) -> None:
    """faster-coco-eval's progress messages, dropped."""


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarize_ap(
    precision: np.ndarray, max_dets: Sequence[int], max_det: int, iou: float | None = None
) -> dict[str, float]:
    """AP over IoU 0.50:0.95 (or at ``iou``), all categories, per area range, at ``max_det``,
    as ``COCOeval.summarize``: ``{"all": .., "small": .., "medium": .., "large": ..}``."""
    m = sorted(max_dets).index(max_det)
    if iou is not None:
        thresholds = np.linspace(0.5, 0.95, 10)
        precision = precision[np.flatnonzero(np.isclose(thresholds, iou))]
    return {area: _mean_valid(precision[:, :, :, a, m]) for a, area in enumerate(AREAS)}


def summarize_ar(recall: np.ndarray, max_dets: Sequence[int], max_det: int) -> dict[str, float]:
    """AR over IoU 0.50:0.95, all categories, per area range, at ``max_det``."""
    m = sorted(max_dets).index(max_det)
    return {area: _mean_valid(recall[:, :, a, m]) for a, area in enumerate(AREAS)}


# ----------------------------------------------------------------------------- metrics


def mask_stats(
    ground_truth: Mapping[str, Any],
    results: Results,
    image_ids: Iterable[int] | None = None,
    backend: str = "auto",
) -> dict[str, float]:
    """COCOeval's twelve segm statistics (per category, budgets 1, 10, 100), in the order of
    ``COCOeval.stats``: :data:`MASK_STATS`."""
    max_dets = (1, 10, 100)
    precision, recall = accumulate(
        ground_truth,
        results,
        use_cats=True,
        max_dets=max_dets,
        image_ids=image_ids,
        backend=_resolve(backend, "ap"),
    )
    areas = summarize_ap(precision, max_dets, 100)
    metrics = {"ap": areas["all"]}
    metrics["ap50"] = summarize_ap(precision, max_dets, 100, iou=0.5)["all"]
    metrics["ap75"] = summarize_ap(precision, max_dets, 100, iou=0.75)["all"]
    metrics.update({f"ap_{area}": areas[area] for area in AREAS[1:]})
    for m in max_dets:
        metrics[f"ar@{m}"] = summarize_ar(recall, max_dets, m)["all"]
    areas = summarize_ar(recall, max_dets, 100)
    metrics.update({f"ar@100_{area}": areas[area] for area in AREAS[1:]})
    return metrics


def mask_ap(
    ground_truth: Mapping[str, Any],
    results: Results,
    image_ids: Iterable[int] | None = None,
    backend: str = "auto",
) -> dict[str, float]:
    """COCO mask AP (per category, 100 detections per image and category):
    ``ap``, ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large`` (COCOeval's first
    six statistics)."""
    stats = mask_stats(ground_truth, results, image_ids, backend)
    return {key: stats[key] for key in MASK_STATS[:6]}


def proposal_ar(
    ground_truth: Mapping[str, Any],
    results: Results,
    image_ids: Iterable[int] | None = None,
    max_dets: Sequence[int] = PROPOSAL_MAX_DETS,
    by_frequency: bool | None = None,
    backend: str = "auto",
) -> dict[str, float]:
    """Class-agnostic mask AR (COCOeval with ``useCats=0``): ``ar@<m>`` for every budget,
    ``ar@<M>_small/_medium/_large`` at the largest budget ``M`` and, for LVIS, ``ar@<M>_
    frequent/_common/_rare``: AR against the ground truth restricted to the categories of
    that frequency group (SAM paper App. D.3).

    Args:
        by_frequency: add the frequency groups (default: when the ground truth is LVIS).
    """
    backend = _resolve(backend, "ar")
    image_ids = None if image_ids is None else sorted(set(image_ids))
    largest = max(max_dets)

    def recall_of(document: Mapping[str, Any]) -> np.ndarray:
        return accumulate(
            document,
            results,
            use_cats=False,
            max_dets=max_dets,
            image_ids=image_ids,
            backend=backend,
        )[1]

    recall = recall_of(ground_truth)
    metrics = {f"ar@{m}": summarize_ar(recall, max_dets, m)["all"] for m in sorted(max_dets)}
    areas = summarize_ar(recall, max_dets, largest)
    metrics.update({f"ar@{largest}_{area}": areas[area] for area in AREAS[1:]})
    if by_frequency is None:
        by_frequency = dataset_format(ground_truth) == "lvis"
    if by_frequency:
        for group, category_ids in frequency_groups(ground_truth).items():
            restricted = recall_of(restrict_annotations(ground_truth, category_ids))
            metrics[f"ar@{largest}_{group}"] = summarize_ar(restricted, max_dets, largest)["all"]
    return metrics
