"""Checking COCO-format and LVIS instances files and converting their segmentations.

The layout (COCO's ``instances_*.json``; LVIS names images by ``coco_url``)::

    {"images": [{"id": int, "width": int, "height": int, "file_name": str, ...}, ...],
     "annotations": [{"id": int, "image_id": int, "segmentation": ..., "area": float,
                      "bbox": [x, y, w, h], "iscrowd": 0 | 1, "category_id": int}, ...],
     "categories": [{"id": int, "name": str, ...}, ...]}

:func:`index_instances` checks the structure of a whole file (what
:class:`~sam_lightning.data.coco.CocoDataset` needs to build its index);
:func:`read_annotation` checks one annotation when it is read and converts its
``segmentation`` (polygons, an uncompressed or a compressed RLE: the forms
``pycocotools.coco.COCO.annToRLE`` reads) to a compressed RLE with ``str`` counts, exactly
as ``annToRLE`` does. Polygons and uncompressed RLEs need ``pycocotools`` (imported when
first needed).

Malformed files raise :class:`~sam_lightning.file_io.CocoFormatError` (the ``error``
argument of the functions that RefCOCO's instances files share), naming the file, the
entry (an annotation by its position and ``id``) and the field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import numpy as np

from sam_lightning.file_io import (
    AnnotationFormatError,
    CocoFormatError,
    check_fields,
    check_unique,
    expected,
    is_int,
    is_number,
    is_number_list,
    kind_of,
    read_json_object,
)

__all__ = [
    "InstancesIndex",
    "annotation_where",
    "check_image_size",
    "coco_file_name",
    "index_instances",
    "lvis_file_name",
    "read_annotation",
    "read_instances",
    "segmentation_to_rle",
]

_IMAGE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (is_int, "an int"),
    "width": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "height": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
}


def _pycocotools_mask() -> ModuleType:
    """``pycocotools.mask``, or an ImportError saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError as error:
        raise ImportError(
            "reading COCO polygons and uncompressed RLEs needs pycocotools: pip install pycocotools"
        ) from error
    return mask


def annotation_where(position: int, ann_id: Any) -> str:
    """How error messages name an annotation: its position in the file and its id."""
    return f"annotations[{position}] (id {ann_id})"


# ------------------------------------------------------------------------ the whole file


def read_instances(path: str | os.PathLike[str], kind: str = "COCO") -> dict[str, Any]:
    """The JSON object of an instances file, with ``images`` and ``annotations`` lists
    (their entries unchecked). Raises CocoFormatError otherwise (``kind`` names the format
    in the message), OSError if it cannot be read."""
    file = str(path)
    document = read_json_object(path, error=CocoFormatError)
    for name in ("images", "annotations"):
        if name not in document:
            raise CocoFormatError(file, name, f"missing; not a {kind} instances file")
        if not isinstance(document[name], list):
            raise CocoFormatError(file, name, f"expected a list, got {kind_of(document[name])}")
    return document


def coco_file_name(info: dict[str, Any], file: str, where: str) -> str:
    """A COCO image's path relative to the image directory: its ``file_name``."""
    name = info.get("file_name")
    if not isinstance(name, str) or not name:
        problem = "missing" if "file_name" not in info else expected(name, "a file name")
        raise CocoFormatError(file, f"{where}.file_name", problem)
    return name


def lvis_file_name(info: dict[str, Any], file: str, where: str) -> str:
    """An LVIS image's path relative to the image directory: the last two parts of its
    ``coco_url`` (``<split>/<name>``), or its ``file_name`` when it has no ``coco_url``
    (LVIS v0.5)."""
    url = info.get("coco_url")
    if url is None and "file_name" in info:
        return coco_file_name(info, file, where)
    if not isinstance(url, str) or not url:
        problem = "missing" if url is None else expected(url, "a URL")
        raise CocoFormatError(file, f"{where}.coco_url", problem)
    parts = [p for p in PurePosixPath(urlparse(url).path).parts if p != "/"]
    if not parts or parts[-1] in (".", ".."):
        raise CocoFormatError(file, f"{where}.coco_url", f"no file name in {url!r}")
    return "/".join(parts[-2:])


@dataclass
class InstancesIndex:
    """What :func:`index_instances` found in an instances file, per image in file order:
    ``image_ids``, ``heights``, ``widths``, ``file_names`` and ``annotations`` (the
    ``(position, annotation)`` pairs of the image's annotations that ``keep`` kept, in file
    order); ``not_exhaustive_category_ids``: image id -> that entry as in the file
    (unchecked), for the images that have one (LVIS)."""

    image_ids: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)
    annotations: list[list[tuple[int, dict[str, Any]]]] = field(default_factory=list)
    not_exhaustive_category_ids: dict[int, Any] = field(default_factory=dict)


def index_instances(
    document: dict[str, Any],
    file: str,
    file_name: Callable[[dict[str, Any], str, str], str] = coco_file_name,
    keep: Callable[[dict[str, Any], str], bool] = lambda ann, where: True,
) -> InstancesIndex:
    """Checks the ``images`` and ``annotations`` of a :func:`read_instances` document and
    indexes them by image.

    Args:
        document: the parsed file.
        file: its name, for error messages.
        file_name: ``(entry, file, where) -> the image's path`` (:func:`coco_file_name`
            or :func:`lvis_file_name`).
        keep: ``(annotation, where) -> whether to index it`` (the dataset's filters; its
            contents are checked by :func:`read_annotation` when read).

    Raises:
        CocoFormatError: an image that is not an object or lacks an int ``id``, an int
            ``width`` or ``height`` >= 1 or its file name; repeated image or annotation
            ids; an annotation without an int ``id`` or whose ``image_id`` is not an image
            of the file.
    """
    index = InstancesIndex()
    rows: dict[int, int] = {}  # image id -> position in the file (and the index)
    for k, info in enumerate(document["images"]):
        where = f"images[{k}]"
        check_fields(info, _IMAGE_FIELDS, file, where, CocoFormatError)
        check_unique(rows, info["id"], k, file, f"{where}.id", "id of images", CocoFormatError)
        if "not_exhaustive_category_ids" in info:
            index.not_exhaustive_category_ids[info["id"]] = info["not_exhaustive_category_ids"]
        index.image_ids.append(info["id"])
        index.heights.append(info["height"])
        index.widths.append(info["width"])
        index.file_names.append(file_name(info, file, where))
        index.annotations.append([])

    seen: dict[int, int] = {}  # annotation id -> position
    for position, ann in enumerate(document["annotations"]):
        if not isinstance(ann, dict):
            raise CocoFormatError(
                file, f"annotations[{position}]", f"expected an object, got {kind_of(ann)}"
            )
        if "id" not in ann or not is_int(ann["id"]):
            raise CocoFormatError(
                file, f"annotations[{position}].id", expected(ann.get("id"), "an int")
            )
        where = annotation_where(position, ann["id"])
        check_unique(
            seen, ann["id"], position, file, f"{where}.id", "id of annotations", CocoFormatError
        )
        image_id = ann.get("image_id")
        if not is_int(image_id) or image_id not in rows:
            problem = "missing" if "image_id" not in ann else f"no image has id {image_id!r}"
            raise CocoFormatError(file, f"{where}.image_id", problem)
        if keep(ann, where):
            index.annotations[rows[image_id]].append((position, ann))
    return index


# ---------------------------------------------------------------------- when it is read


def segmentation_to_rle(
    seg: Any,
    height: int,
    width: int,
    file: str,
    where: str,
    error: type[AnnotationFormatError] = CocoFormatError,
) -> dict[str, Any]:
    """A segmentation in any of COCO's three forms as a compressed RLE with ``str`` counts
    (what ``COCO.annToRLE`` computes). Raises ``error`` for a malformed one."""
    at = f"{where}.segmentation"
    if isinstance(seg, list):  # polygons
        if not seg:
            raise error(file, at, "an empty list of polygons")
        for k, polygon in enumerate(seg):
            if not isinstance(polygon, list):
                raise error(
                    file, f"{at}[{k}]", expected(polygon, "a polygon [x0, y0, x1, y1, ...]")
                )
            if not all(is_number(v) for v in polygon):
                raise error(file, f"{at}[{k}]", "polygon coordinates must be numbers")
            if len(polygon) % 2:
                raise error(file, f"{at}[{k}]", f"odd number of coordinates ({len(polygon)})")
            if len(polygon) < 6:
                raise error(file, f"{at}[{k}]", f"{len(polygon) // 2} points; a polygon needs >= 3")
        mask = _pycocotools_mask()
        rle = mask.merge(mask.frPyObjects(seg, height, width))
    elif isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise error(file, at, expected(seg, 'an RLE {"size": [h, w], "counts": ...}'))
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
            raise error(file, f"{at}.size", expected(size, "[height, width]"))
        if size != [height, width]:
            raise error(
                file,
                f"{at}.size",
                f"{size} differs from the image's [height, width] {[height, width]}",
            )
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if not all(is_int(v) and v >= 0 for v in counts):
                raise error(file, f"{at}.counts", "run lengths must be ints >= 0")
            if sum(counts) != height * width:
                raise error(
                    file,
                    f"{at}.counts",
                    f"run lengths sum to {sum(counts)}, not height * width = {height * width}",
                )
            rle = _pycocotools_mask().frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):  # compressed RLE: passed through
            rle = {"size": size, "counts": counts}
        else:
            raise error(file, f"{at}.counts", expected(counts, "a string or a list of run lengths"))
    else:
        raise error(
            file,
            at,
            f"expected polygons (a list of lists) or an RLE (an object), got {kind_of(seg)}",
        )
    counts = rle["counts"]
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise error(file, f"{at}.counts", "not an ASCII RLE string") from None
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def read_annotation(
    ann: dict[str, Any], height: int, width: int, file: str, where: str
) -> dict[str, Any]:
    """A copy of an indexed annotation of an image of ``height`` x ``width`` with its
    ``segmentation`` as a compressed RLE (:func:`segmentation_to_rle`). Raises
    CocoFormatError for a missing or malformed segmentation, an ``area`` that is not a
    number >= 0 or a ``bbox`` that is not ``[x, y, w, h]`` (both may be absent)."""
    if "segmentation" not in ann:
        raise CocoFormatError(file, f"{where}.segmentation", "missing")
    ann = dict(
        ann, segmentation=segmentation_to_rle(ann["segmentation"], height, width, file, where)
    )
    if "area" in ann and not (is_number(ann["area"]) and ann["area"] >= 0):
        raise CocoFormatError(file, f"{where}.area", expected(ann["area"], "a number >= 0"))
    if "bbox" in ann and not is_number_list(ann["bbox"], 4):
        raise CocoFormatError(file, f"{where}.bbox", expected(ann["bbox"], "[x, y, w, h]"))
    return ann


def check_image_size(
    image: np.ndarray,
    info: dict[str, Any],
    path: Path,
    file: str | os.PathLike[str],
    error: type[AnnotationFormatError] = CocoFormatError,
) -> None:
    """Raises ``error`` (naming ``file`` and the image id) if ``image`` (read from
    ``path``) is not of the ``height`` and ``width`` of its ``info``."""
    if list(image.shape[:2]) != [info["height"], info["width"]]:
        raise error(
            file,
            f"image_id {info['image_id']}: height/width",
            f"[{info['height']}, {info['width']}] but the image {str(path)!r} is "
            f"{image.shape[0]} x {image.shape[1]} (height x width)",
        )
