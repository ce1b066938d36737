"""SA-1B annotation files: writing them (the data engine) and reading SA-1B-style datasets.

One JSON file describes one image, in the layout of the SA-1B release::

    {"image": {"image_id": int, "width": int, "height": int, "file_name": str},
     "annotations": [{"id": int, "segmentation": {"size": [h, w], "counts": str},
                      "area": int, "bbox": [x, y, w, h], "predicted_iou": float,
                      "point_coords": [[x, y]], "stability_score": float,
                      "crop_box": [x, y, w, h]}, ...]}

``segmentation`` is a compressed COCO RLE (see :mod:`sam_lightning.ops.rle`). Reading
needs ``id``, ``segmentation``, ``area`` and ``bbox`` in every annotation (the other fields
are checked when present); writing needs all of them.

:class:`SA1BDataset` reads directories of such files, the extracted SA-1B release
(``sa_<n>.jpg`` next to ``sa_<n>.json``) and the SA-1B ``.tar`` archives without extracting
them. Malformed files raise :class:`SA1BFormatError`, which names the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Name of the run summary the data engine writes next to its JSON files; never an image.
SUMMARY_NAME = "_summary.json"
#: Annotation ids are ``image_id * 2**ANNOTATION_INDEX_BITS + index`` (see :func:`annotation_id`).
ANNOTATION_INDEX_BITS = 16
_REQUIRED = ("id", "segmentation", "area", "bbox")
_ENGINE_FIELDS = ("predicted_iou", "point_coords", "stability_score", "crop_box")
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


class SA1BFormatError(ValueError):
    """A malformed SA-1B annotation file or record.

    Attributes:
        file: the file (``archive.tar:member`` inside an archive) or ``"records"``.
        field: where in the document, e.g. ``"annotations[3].segmentation.size"``.
        problem: what is wrong.
    """

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str) -> None:
        self.file, self.field, self.problem = str(file), field, problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


class SA1BSample(TypedDict):
    """One item of :class:`SA1BDataset`."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    annotations: list[dict[str, Any]]  # RLEs left encoded; see decode_masks
    image_info: dict[str, Any]  # image_id, width, height, file_name
    source: str  # the JSON file, or "archive.tar:member"


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _numbers(value: Any, count: int | None) -> bool:
    return (
        isinstance(value, list)
        and (count is None or len(value) == count)
        and all(_is_number(v) for v in value)
    )


def _check_image_info(info: Any, source: str) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise SA1BFormatError(source, "image", f"expected an object, got {_kind(info)}")
    for field in ("image_id", "width", "height", "file_name"):
        if field not in info:
            raise SA1BFormatError(source, f"image.{field}", "missing")
    if not _is_int(info["image_id"]) or info["image_id"] < 0:
        raise SA1BFormatError(source, "image.image_id", _bad(info["image_id"], "an int >= 0"))
    for field in ("width", "height"):
        if not _is_int(info[field]) or info[field] < 1:
            raise SA1BFormatError(source, f"image.{field}", _bad(info[field], "an int >= 1"))
    if not isinstance(info["file_name"], str) or not info["file_name"]:
        raise SA1BFormatError(source, "image.file_name", _bad(info["file_name"], "a file name"))
    return info["height"], info["width"]


def _check_annotation(ann: Any, where: str, source: str, size: list[int], complete: bool) -> None:
    if not isinstance(ann, dict):
        raise SA1BFormatError(source, where, f"expected an object, got {_kind(ann)}")
    for field in _REQUIRED + (_ENGINE_FIELDS if complete else ()):
        if field not in ann:
            raise SA1BFormatError(source, f"{where}.{field}", "missing")
    if not _is_int(ann["id"]):
        raise SA1BFormatError(source, f"{where}.id", _bad(ann["id"], "an int"))
    seg = ann["segmentation"]
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise SA1BFormatError(
            source, f"{where}.segmentation", _bad(seg, 'a COCO RLE {"size": [h, w], "counts": str}')
        )
    if seg["size"] != size:
        raise SA1BFormatError(
            source,
            f"{where}.segmentation.size",
            f"{seg['size']!r} differs from the image's [height, width] {size}",
        )
    if not isinstance(seg["counts"], str):
        raise SA1BFormatError(
            source, f"{where}.segmentation.counts", _bad(seg["counts"], "a compressed RLE string")
        )
    if not _is_number(ann["area"]) or ann["area"] < 0:
        raise SA1BFormatError(source, f"{where}.area", _bad(ann["area"], "a number >= 0"))
    checks = {
        "bbox": (lambda v: _numbers(v, 4), "[x, y, w, h]"),
        "crop_box": (lambda v: _numbers(v, 4), "[x, y, w, h]"),
        "predicted_iou": (_is_number, "a number"),
        "stability_score": (_is_number, "a number"),
        "point_coords": (
            lambda v: isinstance(v, list) and all(_numbers(p, 2) for p in v),
            "a list of [x, y] points",
        ),
    }
    for field, (check, expected) in checks.items():
        if field in ann and not check(ann[field]):
            raise SA1BFormatError(source, f"{where}.{field}", _bad(ann[field], expected))


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
        raise SA1BFormatError(source, "", f"expected a JSON object, got {_kind(document)}")
    for field in ("image", "annotations"):
        if field not in document:
            raise SA1BFormatError(source, field, "missing")
    height, width = _check_image_info(document["image"], source)
    annotations = document["annotations"]
    if not isinstance(annotations, list):
        raise SA1BFormatError(source, "annotations", f"expected a list, got {_kind(annotations)}")
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


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`SA1BFormatError` (naming the file) when the file
    is not valid JSON or holds something else than an object."""
    file = str(path)
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SA1BFormatError(file, "", f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise SA1BFormatError(file, "", f"expected a JSON object, got {_kind(document)}")
    return document


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), repr(value)[:60])


def _bad(value: Any, expected: str) -> str:
    return f"expected {expected}, got {repr(value)[:80]}"


def parse_sa1b_json(data: bytes | str, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Parses and validates (:func:`validate_sa1b_document`) the text of one annotation file."""
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SA1BFormatError(source, "", f"not valid JSON: {error}") from None
    return validate_sa1b_document(document, source)


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
            raise SA1BFormatError("records", f"annotations[{i}]", _bad(record, "a dict"))
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


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` so that readers see the old file or the whole new one:
    a temporary ``.<name>.<12 hex>.tmp`` in the same directory, fsync, ``os.replace``.
    Creates the parent directories; removes the temporary file if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a temporary file left by an interrupted :func:`write_atomic`."""
    return _TEMP_FILE.fullmatch(Path(path).name) is not None


def write_sa1b_json(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    """Validates a complete SA-1B document (see :func:`make_sa1b_document`) and writes it
    atomically (:func:`write_atomic`). Returns the path."""
    validate_sa1b_document(document, path, complete=True)
    return write_atomic(path, json.dumps(document, separators=(",", ":")).encode("utf-8"))


# ------------------------------------------------------------------------------ images


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str | os.PathLike[str], reason: str) -> None:
        self.source, self.reason = str(source), reason
        super().__init__(f"cannot read image {source}: {reason}")


def decode_image(data: bytes, source: str | os.PathLike[str]) -> np.ndarray:
    """Decodes image bytes to an H x W x 3 uint8 RGB array, EXIF orientation applied (as
    OpenCV's ``imread`` does). Raises UnreadableImageError (a ValueError) naming ``source``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except UnidentifiedImageError:
        raise UnreadableImageError(source, "not an image in a format Pillow reads") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated, corrupt, too large
        raise UnreadableImageError(source, str(error) or type(error).__name__) from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an image file as :func:`decode_image` does. Raises OSError (FileNotFoundError,
    ...) if the file cannot be read, UnreadableImageError if it is not an image."""
    with open(path, "rb") as handle:
        return decode_image(handle.read(), path)


# ------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class _Archive:
    """A tar archive found while scanning the roots (JSON files are plain strings)."""

    path: str


class SA1BDataset:
    """Map-style dataset of images and their mask annotations in the SA-1B layout.

    Every item is an :class:`SA1BSample` dict: ``image`` (H x W x 3 uint8 RGB),
    ``annotations`` (the JSON annotations, RLEs still encoded: decode the ones you need
    with :func:`decode_masks`), ``image_info`` (``image_id``, ``width``, ``height``,
    ``file_name``) and ``source``. Works as a ``torch.utils.data.Dataset`` (``__len__``,
    ``__getitem__``); the index is kept in NumPy arrays so DataLoader workers share it.

    Args:
        roots: one or several of: a directory holding ``*.json`` annotation files and/or
            SA-1B ``*.tar`` archives; a ``.tar`` archive; a ``.json`` file. Hidden files,
            temporary files and the data engine's ``_summary.json`` are ignored.
        image_root: directory that ``image.file_name`` of JSON files is relative to; by
            default each JSON file's own directory (the extracted SA-1B layout). For the
            output of ``python -m sam_lightning.amg`` pass its ``input`` directory.
        recursive: also search subdirectories of directory roots.

    Inside an uncompressed ``.tar`` archive (as SA-1B ships them; nothing is extracted),
    the image of ``dir/sa_1.json`` is the member ``dir/sa_1.<image extension>`` and must be
    named by ``image.file_name``.

    Raises:
        FileNotFoundError: a root does not exist. ValueError: a root is neither a
            directory, a ``.json`` nor a ``.tar`` file, or a tar archive is compressed.
        Reading an item raises SA1BFormatError for a malformed file (naming it and the
        field), FileNotFoundError for a missing image and ValueError for an unreadable one.
    """

    def __init__(
        self,
        roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        image_root: str | os.PathLike[str] | None = None,
        recursive: bool = False,
    ) -> None:
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        self.roots = [Path(root) for root in roots]
        self.image_root = None if image_root is None else Path(image_root)
        self.archives: list[str] = []
        names: list[str] = []  # JSON file paths, or member names inside archives
        image_names: list[str] = []  # the paired image member inside archives
        archive_index: list[int] = []  # -1 for JSON files
        spans: list[tuple[int, int, int, int]] = []  # JSON and image (offset, size) in tars
        for root in self.roots:
            for item in _scan_root(root, recursive):
                if isinstance(item, _Archive):
                    self.archives.append(item.path)
                    for member, image_member, span in _index_archive(item.path):
                        names.append(member)
                        image_names.append(image_member)
                        archive_index.append(len(self.archives) - 1)
                        spans.append(span)
                else:
                    names.append(item)
                    image_names.append("")
                    archive_index.append(-1)
                    spans.append((-1, -1, -1, -1))
        self._names = np.array(names, dtype=str)
        self._image_names = np.array(image_names, dtype=str)
        self._archive = np.array(archive_index, dtype=np.int64)
        self._spans = np.array(spans, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self._names)

    def source(self, index: int) -> str:
        """The annotation file of item ``index`` (``archive.tar:member`` inside an archive)."""
        index = self._check_index(index)
        archive = int(self._archive[index])
        if archive < 0:
            return str(self._names[index])
        return f"{self.archives[archive]}:{self._names[index]}"

    def read_annotations(self, index: int) -> dict[str, Any]:
        """The validated JSON document of item ``index``, without reading the image."""
        index = self._check_index(index)
        archive = int(self._archive[index])
        if archive < 0:
            return read_sa1b_json(str(self._names[index]))
        offset, size = self._spans[index, :2].tolist()
        return parse_sa1b_json(_read_span(self.archives[archive], offset, size), self.source(index))

    def __getitem__(self, index: int) -> SA1BSample:
        index = self._check_index(index)
        source = self.source(index)
        document = self.read_annotations(index)
        info = document["image"]
        archive = int(self._archive[index])
        if archive < 0:
            json_path = Path(str(self._names[index]))
            image_path = (self.image_root or json_path.parent) / info["file_name"]
            if not image_path.is_file():
                raise FileNotFoundError(
                    f"{source}: image.file_name: image {str(image_path)!r} not found"
                )
            image = read_image(image_path)
        else:
            image = self._archive_image(index, info["file_name"], source)
        if list(image.shape[:2]) != [info["height"], info["width"]]:
            raise SA1BFormatError(
                source,
                "image.height/width",
                f"[{info['height']}, {info['width']}] but the image {info['file_name']!r} is "
                f"{image.shape[0]} x {image.shape[1]} (height x width)",
            )
        return {
            "image": image,
            "annotations": document["annotations"],
            "image_info": info,
            "source": source,
        }

    def _archive_image(self, index: int, file_name: str, source: str) -> np.ndarray:
        member, image_member = str(self._names[index]), str(self._image_names[index])
        archive = self.archives[int(self._archive[index])]
        expected = f"{member.rpartition('/')[0]}/{file_name}".lstrip("/")
        if not image_member or image_member != expected:
            found = f" (the image next to it is {image_member!r})" if image_member else ""
            raise FileNotFoundError(
                f"{source}: image.file_name: {file_name!r} is not in the archive next to "
                f"{member}{found}"
            )
        offset, size = self._spans[index, 2:].tolist()
        return decode_image(_read_span(archive, offset, size), f"{archive}:{image_member}")

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return int(index) % len(self)

    def __repr__(self) -> str:
        roots = ", ".join(str(root) for root in self.roots)
        return f"SA1BDataset({len(self)} images from {roots})"


def _wanted_json(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".") and name != SUMMARY_NAME


def _scan_root(root: Path, recursive: bool) -> list[str | _Archive]:
    """JSON files and archives under ``root``, sorted by path."""
    if not root.exists():
        raise FileNotFoundError(f"SA-1B root not found: {root}")
    if root.is_file():
        if root.suffix == ".tar":
            return [_Archive(str(root))]
        if root.suffix == ".json":
            return [str(root)]
        raise ValueError(f"{root}: expected a directory, a .json file or a .tar archive")
    found: list[str | _Archive] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if recursive and not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(directory, name)
            if _wanted_json(name):
                found.append(path)
            elif name.endswith(".tar") and not name.startswith("."):
                found.append(_Archive(path))
    return found


def _index_archive(path: str) -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """(JSON member, image member, (json offset, json size, image offset, image size)) of
    each annotation file in an uncompressed tar archive, in archive order. The image member
    is the one with the JSON member's directory and stem ("" and -1, -1 when absent)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = [m for m in tar if m.isfile()]
    except tarfile.ReadError as error:
        raise ValueError(
            f"{path}: not an uncompressed tar archive ({error}); SA1BDataset reads .tar "
            "archives as SA-1B ships them (extract compressed archives first)"
        ) from None
    images: dict[tuple[str, str], tuple[str, tarfile.TarInfo]] = {}
    annotations: list[tuple[str, tarfile.TarInfo]] = []
    for member in members:
        name = member.name.removeprefix("./")
        parent, _, base = name.rpartition("/")
        stem, _, ext = base.rpartition(".")
        if _wanted_json(base):
            annotations.append((name, member))
        elif stem and f".{ext}".lower() in IMAGE_EXTENSIONS:
            images[(parent, stem)] = (name, member)
    index = []
    for name, member in annotations:
        parent, _, base = name.rpartition("/")
        image_name, image = images.get((parent, base[: -len(".json")]), ("", None))
        image_span = (-1, -1) if image is None else (image.offset_data, image.size)
        index.append((name, image_name, (member.offset_data, member.size, *image_span)))
    return index


def _read_span(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise ValueError(f"{path}: archive truncated at byte {offset + len(data)}")
    return data


def decode_masks(
    annotations: Sequence[Mapping[str, Any]],
    indices: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decodes the RLE masks of the selected annotations.

    Args:
        annotations: ``sample["annotations"]`` of :class:`SA1BDataset`.
        indices: which annotations to decode (default: all), so training can decode only
            the masks it samples.
        size: ``(height, width)``, used for the shape of an empty selection.

    Returns:
        ``masks_nhw``: N x H x W bool tensor (N = number selected).
    """
    import torch

    from sam_lightning.ops import rle_decode

    selected = list(annotations) if indices is None else [annotations[i] for i in indices]
    if not selected:
        height, width = size if size is not None else (0, 0)
        return torch.zeros((0, height, width), dtype=torch.bool)
    return rle_decode([ann["segmentation"] for ann in selected]).bool()
