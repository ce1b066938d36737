"""Small generated COCO and LVIS v1 instance files, images and predictions for the
evaluation tests.

Ground truth mixes the segmentation forms of the real files (polygons, compressed and, for
COCO crowd regions, uncompressed RLEs) and object sizes in all three COCO area ranges.
LVIS files have a ``frequency`` per category, ``neg_category_ids`` and
``not_exhaustive_category_ids`` per image, ``coco_url`` instead of ``file_name`` and no
``iscrowd``. Predictions are perturbed copies of ground-truth masks (shifted, cropped,
merged, relabelled) plus random blobs, with tied scores, so that matching, ranking and
ignore rules all have work to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_api

FREQUENCIES = ("f", "c", "r")


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A bool mask as a compressed RLE with ``str`` counts, as COCO files store it."""
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A segmentation in any of COCO's forms as a compressed RLE (as ``annToRLE``)."""
    if isinstance(segmentation, list):
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_api.frPyObjects(segmentation, height, width)
    return segmentation


def _polygon(rng: np.random.Generator, height: int, width: int, size: float) -> list[float]:
    """A star-ish polygon of radius about ``size`` inside the image."""
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 11)))
    radii = size * rng.uniform(0.6, 1.0, len(angles))
    xs = np.clip(cx + radii * np.cos(angles), 0, width - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, height - 1)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def _blob(rng: np.random.Generator, height: int, width: int, size: float) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = size * rng.uniform(0.5, 1.2), size * rng.uniform(0.5, 1.2)
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def _segment(rng: np.random.Generator, height: int, width: int, crowd: bool) -> tuple:
    """(segmentation in one of COCO's forms, its mask); sizes span small to large."""
    size = float(rng.choice([6.0, 12.0, 25.0, 45.0, 90.0]))
    if crowd:
        mask = _blob(rng, height, width, size)
        return _uncompressed(mask), mask
    if rng.random() < 0.6:
        polygons = [_polygon(rng, height, width, size)]
        if rng.random() < 0.2:
            polygons.append(_polygon(rng, height, width, size / 2))
        rle = mask_api.merge(mask_api.frPyObjects(polygons, height, width))
        return polygons, mask_api.decode(rle).astype(bool)
    mask = _blob(rng, height, width, size)
    return encode(mask), mask


def make_ground_truth(
    seed: int,
    num_images: int = 6,
    num_categories: int = 6,
    lvis: bool = False,
    objects: tuple[int, int] = (3, 9),
) -> dict[str, Any]:
    """A COCO (or LVIS v1) instances document.

    Category ids start at 3 and are not contiguous; annotation ids start at 1 (0 means
    "unmatched" to the evaluators). A COCO file has some crowd regions and an image with no
    annotation; an LVIS file has frequency groups, negative and not-exhaustive categories.
    """
    rng = np.random.default_rng(seed)
    category_ids = [3 + 2 * k for k in range(num_categories)]
    categories = [{"id": c, "name": f"thing_{c}"} for c in category_ids]
    if lvis:
        for k, category in enumerate(categories):
            category["frequency"] = FREQUENCIES[k % 3]
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(100, 160)), int(rng.integers(120, 200))
        info: dict[str, Any] = {"id": 10 * image_id, "height": height, "width": width}
        name = f"{10 * image_id:012d}.png"
        if lvis:
            info["coco_url"] = f"http://images.cocodataset.org/val2017/{name}"
        else:
            info["file_name"] = name
        count = 0 if image_id == num_images and not lvis else int(rng.integers(*objects))
        present = set()
        for _ in range(count):
            crowd = not lvis and rng.random() < 0.12
            segmentation, mask = _segment(rng, height, width, crowd)
            if not mask.any():
                continue
            category = int(rng.choice(category_ids))
            present.add(category)
            ann = {
                "id": len(annotations) + 1,
                "image_id": info["id"],
                "category_id": category,
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": [float(v) for v in mask_api.toBbox(encode(mask))],
            }
            if not lvis:
                ann["iscrowd"] = int(crowd)
            annotations.append(ann)
        if lvis:
            absent = [c for c in category_ids if c not in present]
            info["neg_category_ids"] = absent[: len(absent) // 2]
            info["not_exhaustive_category_ids"] = sorted(present)[:1]
        images.append(info)
    return {"images": images, "annotations": annotations, "categories": categories}


def make_predictions(
    seed: int,
    document: dict[str, Any],
    per_image: int = 12,
    category_id: int | None = None,
) -> list[dict[str, Any]]:
    """COCO results for ``document``'s images: for each ground-truth mask a shifted or
    cropped copy (sometimes two, sometimes none), merged pairs, random blobs; scores on a
    coarse grid so that ties occur. ``category_id`` fixes every category (proposals)."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in document["categories"]]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in document["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for info in document["images"]:
        height, width = info["height"], info["width"]
        gts = by_image.get(info["id"], [])
        gt_masks = [
            mask_api.decode(to_rle(ann["segmentation"], height, width)).astype(bool) for ann in gts
        ]
        candidates = []
        for ann, mask in zip(gts, gt_masks):
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                shifted = np.roll(mask, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
                if rng.random() < 0.3:
                    shifted[: int(rng.integers(0, height)), :] = False
                label = ann["category_id"] if rng.random() < 0.8 else int(rng.choice(category_ids))
                candidates.append((shifted, label))
        if len(gts) >= 2 and rng.random() < 0.5:  # two objects as one mask, twice
            a, b = (int(k) for k in rng.choice(len(gts), 2, replace=False))
            merged = gt_masks[a] | gt_masks[b]
            candidates.append((merged, gts[a]["category_id"]))
            candidates.append((merged, gts[b]["category_id"]))
        while len(candidates) < per_image:
            size = float(rng.choice([5.0, 15.0, 40.0]))
            candidates.append((_blob(rng, height, width, size), int(rng.choice(category_ids))))
        for mask, label in candidates:
            if not mask.any():
                continue
            results.append(
                {
                    "image_id": info["id"],
                    "category_id": category_id if category_id is not None else label,
                    "segmentation": encode(mask),
                    "score": float(np.round(rng.uniform(0.05, 1.0), 1)),
                }
            )
    return results


def write_document(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


def write_images(folder: Path, document: dict[str, Any], seed: int = 0) -> None:
    """An RGB PNG for every image of ``document``, named as COCO (``file_name``) or LVIS
    (the last part of ``coco_url``, under ``val2017/``) expects."""
    rng = np.random.default_rng(seed)
    for info in document["images"]:
        name = info.get("file_name") or "/".join(info["coco_url"].split("/")[-2:])
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
