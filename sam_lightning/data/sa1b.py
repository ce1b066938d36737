"""The SA-1B annotation format: validating, building and writing one image's JSON file.

One JSON file describes one image, in the layout of the SA-1B release::

    {"image": {"image_id": int, "width": int, "height": int, "file_name": str},
     "annotations": [{"id": int, "segmentation": {"size": [h, w], "counts": str},
                      "area": int, "bbox": [x, y, w, h], "predicted_iou": float,
                      "point_coords": [[x, y]], "stability_score": float,
                      "crop_box": [x, y, w, h]}, ...]}

``segmentation`` is a compressed COCO RLE (see :mod:`sam_lightning.ops.rle`). Reading
needs ``id``, ``segmentation``, ``area`` and ``bbox`` in every annotation (the other fields
are checked when present); writing needs all of them. Malformed files raise
:class:`~sam_lightning.file_io.SA1BFormatError`, which names the file and the field.
:mod:`sam_lightning.data.sa1b_dataset` reads datasets of such files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from sam_lightning.file_io import (
    SA1BFormatError,
    expected,
    is_int,
    is_number,
    is_number_list,
    kind_of,
    parse_json_object,
    write_atomic,
)

#: Name of the run summary the data engine writes next to its JSON files; never an image.
SUMMARY_NAME = "_summary.json"
#: The directory of a data-engine run's logs and progress files inside its output; readers skip it.
LOGS_DIR = "_logs"
#: Annotation ids are ``image_id * 2**ANNOTATION_INDEX_BITS + index`` (see :func:`annotation_id`).
ANNOTATION_INDEX_BITS = 16
_REQUIRED = ("id", "segmentation", "area", "bbox")
_ENGINE_FIELDS = ("predicted_iou", "point_coords", "stability_score", "crop_box")


class SA1BSample(TypedDict):
    """One item of :class:`SA1BDataset`."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    annotations: list[dict[str, Any]]  # RLEs left encoded; see decode_masks
    image_info: dict[str, Any]  # image_id, width, height, file_name
    source: str  # the JSON file, or "archive.tar:member"


# --------------------------------------------------------------------------- validation


def _check_image_info(info: Any, source: str) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise SA1BFormatError(source, "image", f"expected an object, got {kind_of(info)}")
    for field in ("image_id", "width", "height", "file_name"):
        if field not in info:
            raise SA1BFormatError(source, f"image.{field}", "missing")
    if not is_int(info["image_id"]) or info["image_id"] < 0:
        raise SA1BFormatError(source, "image.image_id", expected(info["image_id"], "an int >= 0"))
    for field in ("width", "height"):
        if not is_int(info[field]) or info[field] < 1:
            raise SA1BFormatError(source, f"image.{field}", expected(info[field], "an int >= 1"))
    if not isinstance(info["file_name"], str) or not info["file_name"]:
        raise SA1BFormatError(source, "image.file_name", expected(info["file_name"], "a file name"))
    return info["height"], info["width"]


def _check_annotation(ann: Any, where: str, source: str, size: list[int], complete: bool) -> None:
    if not isinstance(ann, dict):
        raise SA1BFormatError(source, where, f"expected an object, got {kind_of(ann)}")
    for field in _REQUIRED + (_ENGINE_FIELDS if complete else ()):
        if field not in ann:
            raise SA1BFormatError(source, f"{where}.{field}", "missing")
    if not is_int(ann["id"]):
        raise SA1BFormatError(source, f"{where}.id", expected(ann["id"], "an int"))
    seg = ann["segmentation"]
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise SA1BFormatError(
            source,
            f"{where}.segmentation",
            expected(seg, 'a COCO RLE {"size": [h, w], "counts": str}'),
        )
    if seg["size"] != size:
        raise SA1BFormatError(
            source,
            f"{where}.segmentation.size",
            f"{seg['size']!r} differs from the image's [height, width] {size}",
        )
    if not isinstance(seg["counts"], str):
        raise SA1BFormatError(
            source,
            f"{where}.segmentation.counts",
            expected(seg["counts"], "a compressed RLE string"),
        )
    if not is_number(ann["area"]) or ann["area"] < 0:
        raise SA1BFormatError(source, f"{where}.area", expected(ann["area"], "a number >= 0"))
    checks = {
        "bbox": (lambda v: is_number_list(v, 4), "[x, y, w, h]"),
        "crop_box": (lambda v: is_number_list(v, 4), "[x, y, w, h]"),
        "predicted_iou": (is_number, "a number"),
        "stability_score": (is_number, "a number"),
        "point_coords": (
            lambda v: isinstance(v, list) and all(is_number_list(p, 2) for p in v),
            "a list of [x, y] points",
        ),
    }
    for field, (check, what) in checks.items():
        if field in ann and not check(ann[field]):
            raise SA1BFormatError(source, f"{where}.{field}", expected(ann[field], what))


def validate_sa1b_document(
    document: Any, source: str | os.PathLike[str], complete: bool = False
) -> dict[str, Any]:
    """Checks the structure of a parsed SA-1B JSON document and returns it.

    Args:
        document: the parsed JSON.
        source: file name used in error messages.
        complete: require every field the data engine writes (``predicted_iou``,
            ``point_coords``, ``stability_score``, ``crop_box``), not just the fields
            training needs (``id``, ``segmentation``, ``area``, ``bbox``).

    Raises:
        SA1BFormatError: naming ``source`` and the first bad field. Every segmentation's
            ``size`` must equal the image's ``[height, width]``; annotation ids must be
            unique. RLE counts strings are not decoded here.
    """
    source = str(source)
    if not isinstance(document, dict):
        raise SA1BFormatError(source, "", f"expected a JSON object, got {kind_of(document)}")
    for field in ("image", "annotations"):
        if field not in document:
            raise SA1BFormatError(source, field, "missing")
    height, width = _check_image_info(document["image"], source)
    annotations = document["annotations"]
    if not isinstance(annotations, list):
        raise SA1BFormatError(source, "annotations", f"expected a list, got {kind_of(annotations)}")
    seen: dict[int, int] = {}
    for i, ann in enumerate(annotations):
        _check_annotation(ann, f"annotations[{i}]", source, [height, width], complete)
        if ann["id"] in seen:
            raise SA1BFormatError(
                source,
                f"annotations[{i}].id",
                f"{ann['id']} repeats the id of annotations[{seen[ann['id']]}]",
            )
        seen[ann["id"]] = i
    return document


def parse_sa1b_json(data: bytes | str, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Parses and validates (:func:`validate_sa1b_document`) the text of one annotation file."""
    return validate_sa1b_document(parse_json_object(data, source, SA1BFormatError), source)


def read_sa1b_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates one annotation file. Raises FileNotFoundError, SA1BFormatError."""
    with open(path, "rb") as handle:
        return parse_sa1b_json(handle.read(), path)


# ------------------------------------------------------------------------------ writing


def sa1b_image_id(name: str) -> int:
    """The image id the data engine writes for an image whose output path (relative to the
    output directory, without ``.json``, ``/``-separated) is ``name``.

    SA-1B names ``sa_<n>`` keep their number ``n``. Any other name gets
    ``2**46 + (first 46 bits of its SHA-256)``: stable across runs and machines, never equal
    to an SA-1B number below 2**46, and small enough that annotation ids fit in 63 bits.
    """
    match = re.fullmatch(r"sa_(\d+)", name)
    if match and int(match[1]) < 2**46:
        return int(match[1])
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return 2**46 + (digest >> (64 - 46))


def annotation_id(image_id: int, index: int) -> int:
    """The id of the ``index``-th annotation of an image: ``image_id * 2**16 + index``, unique
    within a dataset whose image ids are unique. Raises ValueError past 2**16 masks."""
    if not 0 <= index < 2**ANNOTATION_INDEX_BITS:
        raise ValueError(
            f"annotation index {index} out of range: at most {2**ANNOTATION_INDEX_BITS} masks "
            "per image"
        )
    return (image_id << ANNOTATION_INDEX_BITS) | index


def _plain(value: Any) -> Any:
    """``value`` with NumPy/torch scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()  # numpy scalar/array, torch tensor
    return value


def _segmentation(seg: Any, i: int) -> Any:
    if not isinstance(seg, Mapping):
        raise SA1BFormatError(
            "records",
            f"annotations[{i}].segmentation",
            f"expected a COCO RLE dict, got {type(seg).__name__}; run the generator with "
            "output_mode='coco_rle'",
        )
    counts = seg.get("counts")
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts).decode("ascii")
    elif isinstance(counts, (list, tuple, np.ndarray)) or hasattr(counts, "tolist"):
        from sam_lightning.ops import rle_compress  # uncompressed RLE (run lengths)

        counts = rle_compress(_plain(counts)).decode("ascii")
    return {"size": _plain(seg.get("size")), "counts": counts}


def make_sa1b_document(
    records: Sequence[Mapping[str, Any]],
    image_id: int,
    width: int,
    height: int,
    file_name: str,
    annotation_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Builds the SA-1B document of one image from automatic mask generator records.

    Args:
        records: ``SamAutomaticMaskGenerator.generate`` output (``output_mode="coco_rle"``;
            uncompressed RLEs are compressed): dicts with ``segmentation``, ``area``,
            ``bbox``, ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``.
            NumPy and torch numbers are converted to Python numbers.
        image_id, width, height, file_name: the ``"image"`` entry.
        annotation_ids: one per record; default :func:`annotation_id` ``(image_id, i)``.

    Raises:
        SA1BFormatError: a record lacks a field or has a wrong type or mask size (file
            ``"records"``, field ``annotations[i].<field>``).
    """
    if annotation_ids is None:
        annotation_ids = [annotation_id(image_id, i) for i in range(len(records))]
    if len(annotation_ids) != len(records):
        raise ValueError(f"{len(annotation_ids)} annotation ids for {len(records)} records")
    annotations = []
    for i, (record, ann_id) in enumerate(zip(records, annotation_ids)):
        if not isinstance(record, Mapping):
            raise SA1BFormatError("records", f"annotations[{i}]", expected(record, "a dict"))
        ann: dict[str, Any] = {"id": _plain(ann_id)}
        for field in ("segmentation", "area", "bbox", *_ENGINE_FIELDS):
            if field not in record:
                raise SA1BFormatError("records", f"annotations[{i}].{field}", "missing")
        ann["segmentation"] = _segmentation(record["segmentation"], i)
        for field in ("area", "bbox", *_ENGINE_FIELDS):
            ann[field] = _plain(record[field])
        annotations.append(ann)
    image = {"image_id": image_id, "width": width, "height": height, "file_name": file_name}
    document = {"image": _plain(image), "annotations": annotations}
    return validate_sa1b_document(document, "records", complete=True)


def write_sa1b_json(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    """Validates a complete SA-1B document (see :func:`make_sa1b_document`) and writes it
    atomically (:func:`~sam_lightning.file_io.write_atomic`). Returns the path."""
    validate_sa1b_document(document, path, complete=True)
    return write_atomic(path, json.dumps(document, separators=(",", ":")).encode("utf-8"))
