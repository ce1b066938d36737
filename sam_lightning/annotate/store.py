"""The image folder being annotated and the SA-1B annotation files of its images.

:class:`ImageFolder` lists the images of one directory (not recursive). Images are addressed
by their file name, and a name is only ever looked up in that listing, so a request cannot
name a file outside the folder: names with ``/``, ``..``, absolute paths, hidden files and
symbolic links that resolve outside the folder are simply not there.

:class:`AnnotationStore` keeps one SA-1B-layout JSON per image, ``<output>/<stem>.json``
(see :mod:`sam_lightning.data.sa1b`), read back by ``SA1BDataset(output, image_root=images)``.
Besides the fields training needs (``id``, ``segmentation``, ``area``, ``bbox``) every
annotation records how it was made::

    {"source": "person" | "model", "prompts": {"points": [[x, y, label]], "box": [x0, y0, x1,
     y1] | null}, "seconds": float | null, "annotator": str, "session": str,
     "created": ISO 8601 UTC, "candidate": int | null, "score": float | null, "refined": bool}

``seconds`` is the time from the first prompt to accepting the mask (null for model masks,
which nobody timed); ``candidate`` and ``score`` the multimask output picked and its
predicted IoU; ``refined`` whether brush or eraser changed it. Model masks of the
semi-automatic stage also keep the generator's ``predicted_iou``, ``point_coords``,
``stability_score`` and ``crop_box``. The tool's own per-image state is the top-level
``"annotate"`` object: ``done``, ``next_index`` (annotation ids are
``image_id * 2**16 + index``, never reused) and ``prefill`` (the semi-automatic pre-fill:
``session``, ``annotator``, ``masks`` proposed, ``seconds``, or null).

Every change rewrites the whole file atomically (:func:`~sam_lightning.data.sa1b.write_atomic`),
so a server killed at any moment leaves each file as it was before or after a save.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam_lightning import ops
from sam_lightning.data.sa1b import (
    SA1BFormatError,
    annotation_id,
    read_sa1b_json,
    sa1b_image_id,
    validate_sa1b_document,
)
from sam_lightning.file_io import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    is_temp_file,
    read_image,
    write_atomic,
)

log = logging.getLogger("sam_lightning.annotate")

SOURCES = ("person", "model")
#: Formats browsers display as they are; others (TIFF, BMP) are sent as PNG.
_WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_EXIF_ORIENTATION = 0x0112


class ApiError(Exception):
    """A request the tool refuses: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ImageEntry:
    """One image of the folder: ``name`` is its file name (the API's key), ``stem`` the name
    of its annotation file, ``width`` x ``height`` its size with EXIF orientation applied."""

    name: str
    path: Path
    stem: str
    image_id: int
    width: int
    height: int
    mtime_ns: int


class ImageFolder:
    """The images of ``root`` (jpg, jpeg, png, bmp, tif, tiff, webp; sorted by name).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: two images share a stem (``a.png`` and ``a.jpg`` would write ``a.json``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"images: not a directory: {self.root}")
        self._resolved_root = self.root.resolve()
        self._lock = threading.Lock()
        self._entries: dict[str, ImageEntry] = {}
        self._warned: set[tuple[str, int]] = set()
        self.scan(strict=True)

    def scan(self, strict: bool = False) -> list[ImageEntry]:
        """Re-reads the directory (new images appear, removed ones go). With ``strict``, a
        stem shared by two images raises ValueError; otherwise the first one is kept."""
        entries: dict[str, ImageEntry] = {}
        stems: dict[str, str] = {}
        for path in sorted(self.root.iterdir()):
            entry = self._entry(path)
            if entry is None:
                continue
            if entry.stem in stems:
                message = (
                    f"images {stems[entry.stem]!r} and {entry.name!r} would share the annotation "
                    f"file {entry.stem}.json; rename one"
                )
                if strict:
                    raise ValueError(message)
                self._warn_once(entry.name, entry.mtime_ns, message)
                continue
            stems[entry.stem] = entry.name
            entries[entry.name] = entry
        with self._lock:
            self._entries = entries
        return list(entries.values())

    def _entry(self, path: Path) -> ImageEntry | None:
        name = path.name
        if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            return None
        resolved = path.resolve()
        if not resolved.is_relative_to(self._resolved_root) or not resolved.is_file():
            return None  # a symbolic link out of the folder, or not a file
        stat = resolved.stat()
        previous = self._entries.get(name)
        if previous is not None and previous.mtime_ns == stat.st_mtime_ns:
            return previous
        try:
            width, height = _oriented_size(resolved)
        except (OSError, ValueError, SyntaxError) as error:
            message = f"skipping unreadable image {path}: {error}"
            self._warn_once(name, stat.st_mtime_ns, message)
            return None
        stem, mtime = path.stem, stat.st_mtime_ns
        return ImageEntry(name, resolved, stem, sa1b_image_id(stem), width, height, mtime)

    def _warn_once(self, name: str, mtime_ns: int, message: str) -> None:
        if (name, mtime_ns) not in self._warned:
            self._warned.add((name, mtime_ns))
            log.warning("%s", message)

    @property
    def entries(self) -> list[ImageEntry]:
        """The images of the last scan."""
        with self._lock:
            return list(self._entries.values())

    def get(self, name: str) -> ImageEntry:
        """The image called ``name`` (rescanning once for a new file); ApiError 404 if none."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None and isinstance(name, str) and "/" not in name and "\\" not in name:
            entry = next((e for e in self.scan() if e.name == name), None)
        if entry is None:
            raise ApiError(404, f"no image {name!r} in the images folder")
        return entry

    def _checked_path(self, entry: ImageEntry) -> Path:
        path = (self.root / entry.name).resolve()
        if not path.is_relative_to(self._resolved_root) or not path.is_file():
            raise ApiError(404, f"image {entry.name!r} is no longer in the images folder")
        return path

    def read(self, entry: ImageEntry) -> np.ndarray:
        """The image as H x W x 3 uint8 RGB, EXIF orientation applied."""
        try:
            image = read_image(self._checked_path(entry))
        except (OSError, UnreadableImageError) as error:
            raise ApiError(422, f"cannot read image {entry.name!r}: {error}") from None
        if image.shape[:2] != (entry.height, entry.width):
            raise ApiError(409, f"image {entry.name!r} changed on disk; reload the page")
        return image

    def web_image(self, entry: ImageEntry) -> tuple[bytes, str]:
        """The bytes and content type to show ``entry`` in a browser, in the orientation the
        model sees: the file itself when a browser shows it unrotated, else a PNG."""
        path = self._checked_path(entry)
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                content_type = _WEB_FORMATS.get(image.format or "")
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except (OSError, SyntaxError, ValueError) as error:
            raise ApiError(422, f"cannot read image {entry.name!r}: {error}") from None
        if content_type is not None and orientation in (0, 1):
            return data, content_type
        buffer = io.BytesIO()
        Image.fromarray(self.read(entry)).save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


def _oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image after EXIF orientation, without decoding its pixels."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
    return width, height


# ------------------------------------------------------------------------------ validation


def make_annotation(
    ann_id: int,
    segmentation: Mapping[str, Any],
    source: str,
    prompts: Mapping[str, Any],
    seconds: float | None,
    annotator: str,
    session: str,
    **extra: Any,
) -> dict[str, Any]:
    """One annotation record (see the module docstring); area and bbox from the RLE."""
    counts = segmentation["counts"]
    rle = {
        "size": list(segmentation["size"]),
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }
    return {
        "id": ann_id,
        "segmentation": rle,
        "area": int(ops.rle_area([rle])[0]),
        "bbox": [float(v) for v in ops.rle_to_bbox([rle])[0].tolist()],
        "source": source,
        "prompts": {"points": prompts.get("points", []), "box": prompts.get("box")},
        "seconds": seconds,
        "annotator": annotator,
        "session": session,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


# ------------------------------------------------------------------------------- store


class AnnotationStore:
    """The annotation files of an :class:`ImageFolder` in ``output`` (created)."""

    def __init__(self, output: str | os.PathLike[str], folder: ImageFolder) -> None:
        self.output = Path(output)
        self.output.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._lock = threading.RLock()
        for path in self.output.glob(".*.tmp"):
            if is_temp_file(path):
                path.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted write", path)

    def path(self, entry: ImageEntry) -> Path:
        """``<output>/<stem>.json``."""
        return self.output / f"{entry.stem}.json"

    def exists(self, entry: ImageEntry) -> bool:
        """Whether ``entry`` has an annotation file."""
        return self.path(entry).is_file()

    def load(self, entry: ImageEntry) -> dict[str, Any]:
        """The document of ``entry``: its file, or a new empty one (not written).

        Raises:
            ApiError 409: the file exists but is not a valid SA-1B document of this image
                (it is left untouched: fix or move it).
        """
        path = self.path(entry)
        if not path.is_file():
            info = {
                "image_id": entry.image_id,
                "width": entry.width,
                "height": entry.height,
                "file_name": entry.name,
            }
            return {"image": info, "annotations": [], "annotate": _state({})}
        try:
            document = read_sa1b_json(path)
        except SA1BFormatError as error:
            raise ApiError(409, f"{error}; fix or move the file") from None
        info = document["image"]
        if [info["width"], info["height"]] != [entry.width, entry.height]:
            raise ApiError(
                409,
                f"{path}: image.width/height [{info['width']}, {info['height']}] differ from "
                f"the image's [{entry.width}, {entry.height}]; fix or move the file",
            )
        document["annotate"] = _state(document.get("annotate"))
        return document

    def save(self, entry: ImageEntry, document: dict[str, Any]) -> None:
        """Validates ``document`` and writes it atomically."""
        path = self.path(entry)
        validate_sa1b_document(document, path)
        try:
            write_atomic(path, json.dumps(document, separators=(",", ":")).encode("utf-8"))
        except OSError as error:
            raise ApiError(500, f"could not write {path} ({error}); it is unchanged") from None

    def add(self, entry: ImageEntry, records: Sequence[Mapping[str, Any]], **fields: Any) -> list:
        """Appends annotations built by ``make_annotation(id, **record, **fields)`` (ids
        assigned here) and saves; returns them. ``fields`` may set ``prefill``."""
        prefill = fields.pop("prefill", None)
        with self._lock:
            document = self.load(entry)
            state = document["annotate"]
            taken = {a["id"] for a in document["annotations"]}
            added = []
            for record in records:
                ann_id = annotation_id(entry.image_id, state["next_index"])
                while ann_id in taken:  # a file written by another tool
                    state["next_index"] += 1
                    ann_id = annotation_id(entry.image_id, state["next_index"])
                state["next_index"] += 1
                added.append(make_annotation(ann_id, **record, **fields))
            document["annotations"].extend(added)
            if prefill is not None:
                state["prefill"] = prefill
            self.save(entry, document)
        return added

    def create(
        self, entry: ImageEntry, records: Sequence[Mapping[str, Any]], **fields: Any
    ) -> list[dict[str, Any]] | None:
        """:meth:`add` for an image without an annotation file; None (nothing written) if
        it has one by now."""
        with self._lock:
            return None if self.exists(entry) else self.add(entry, records, **fields)

    def delete(self, entry: ImageEntry, ann_id: int) -> dict[str, Any]:
        """Removes annotation ``ann_id`` and saves; returns it. ApiError 404 if absent."""
        with self._lock:
            document = self.load(entry)
            annotations = document["annotations"]
            index = next((i for i, a in enumerate(annotations) if a["id"] == ann_id), None)
            if index is None:
                raise ApiError(404, f"image {entry.name!r} has no mask {ann_id}")
            removed = annotations.pop(index)
            self.save(entry, document)
        return removed

    def set_done(self, entry: ImageEntry, done: bool) -> None:
        """Marks ``entry`` done (or not) and saves."""
        with self._lock:
            document = self.load(entry)
            document["annotate"]["done"] = done
            self.save(entry, document)


def _state(value: Any) -> dict[str, Any]:
    """The ``"annotate"`` object with defaults for missing keys."""
    value = value if isinstance(value, dict) else {}
    next_index = value.get("next_index", 0)
    return {
        "done": bool(value.get("done", False)),
        "next_index": next_index if isinstance(next_index, int) and next_index >= 0 else 0,
        "prefill": value.get("prefill"),
    }
