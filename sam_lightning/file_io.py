"""File I/O shared by every layer: atomic writes, images, JSON objects and the errors of
malformed annotation files.

Atomic writes go through :func:`atomic_path`: a temporary ``.<name>.<12 hex>.tmp`` next to
the target, fsynced, then ``os.replace`` d over it, so a reader sees the old file or the
whole new one and an interrupted write leaves only a temporary file that
:func:`is_temp_file` recognises and :func:`remove_temp_files` cleans up.

Images are decoded by Pillow to H x W x 3 uint8 RGB with the EXIF orientation applied (as
OpenCV's ``imread`` does); a file Pillow cannot decode raises :class:`UnreadableImageError`.

Annotation files (SA-1B, COCO, LVIS, RefCOCO) raise a subclass of
:class:`AnnotationFormatError`, which names the file, the field and the problem. The small
validators (:func:`is_int`, :func:`is_number`, :func:`expected`, ...) are what their
parsers check values with.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")

# ------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path next to ``path`` to write the new file to; when the block
    ends without an error the file is fsynced and renamed over ``path``. The parent
    directories are created; the temporary file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        handle.write(data)
    return Path(path)


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a temporary file left by an interrupted atomic write."""
    return _TEMP_FILE.fullmatch(Path(path).name) is not None


def remove_temp_files(directory: str | os.PathLike[str], recursive: bool = False) -> int:
    """Removes the temporary files of interrupted atomic writes in ``directory`` (and its
    subdirectories with ``recursive``); returns how many."""
    directory = Path(directory)
    candidates = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = 0
    for path in candidates:
        if path.is_file() and is_temp_file(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# -------------------------------------------------------------------------------- images


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
    """Reads an image file as :func:`decode_image` does. Raises FileNotFoundError ("image
    file not found: <path>") or another OSError if the file cannot be read, and
    UnreadableImageError if it is not an image."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as handle:
        return decode_image(handle.read(), path)


# ------------------------------------------------------------------- annotation files


class AnnotationFormatError(ValueError):
    """A malformed annotation file or record (the base of the per-format errors).

    Attributes:
        file: the file (``archive.tar:member`` inside an archive) or ``"records"``.
        field: where in the document, e.g. ``"annotations[3].segmentation.size"``.
        problem: what is wrong.
    """

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str) -> None:
        self.file, self.field, self.problem = str(file), field, problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


class SA1BFormatError(AnnotationFormatError):
    """A malformed SA-1B annotation file or record."""


class CocoFormatError(AnnotationFormatError):
    """A malformed COCO-format or LVIS instances file."""


class RefCocoFormatError(AnnotationFormatError):
    """A malformed RefCOCO/+/g ``refs`` or instances file."""


def read_json_object(
    path: str | os.PathLike[str], error: type[AnnotationFormatError] = AnnotationFormatError
) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (naming the file) when the file is not valid
    JSON or holds something else than an object. Raises OSError if it cannot be read."""
    with open(path, "rb") as handle:
        return parse_json_object(handle.read(), path, error)


def parse_json_object(
    data: bytes | str,
    source: str | os.PathLike[str],
    error: type[AnnotationFormatError] = AnnotationFormatError,
) -> dict[str, Any]:
    """The JSON object in ``data`` (the text of ``source``), as :func:`read_json_object`."""
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(source, "", f"not valid JSON: {problem}") from None
    if not isinstance(document, dict):
        raise error(source, "", f"expected a JSON object, got {kind_of(document)}")
    return document


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def is_number_list(value: Any, count: int | None = None) -> bool:
    """A list of :func:`is_number` values, of length ``count`` unless it is None."""
    return (
        isinstance(value, list)
        and (count is None or len(value) == count)
        and all(is_number(v) for v in value)
    )


def kind_of(value: Any) -> str:
    """How an error message names what was found instead: "an object", "a list", ..."""
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), repr(value)[:60])


def expected(value: Any, what: str) -> str:
    """The problem text "expected <what>, got <value>" (the value shortened)."""
    return f"expected {what}, got {repr(value)[:80]}"


def check_fields(
    record: Any,
    checks: dict[str, tuple[Callable[[Any], bool], str]],
    source: str | os.PathLike[str],
    where: str,
    error: type[AnnotationFormatError] = AnnotationFormatError,
) -> dict[str, Any]:
    """``record`` if it is an object whose fields ``checks`` (field -> ``(check, what)``)
    are all there and pass their check. Else ``error`` naming ``source`` and ``where``: not
    an object; the first missing field ("missing"); the first that fails
    (:func:`expected` ``what``)."""
    if not isinstance(record, dict):
        raise error(source, where, f"expected an object, got {kind_of(record)}")
    for name in checks:
        if name not in record:
            raise error(source, f"{where}.{name}", "missing")
    for name, (check, what) in checks.items():
        if not check(record[name]):
            raise error(source, f"{where}.{name}", expected(record[name], what))
    return record


def check_unique(
    seen: dict[Any, int],
    key: Any,
    position: int,
    source: str | os.PathLike[str],
    field: str,
    of: str,
    error: type[AnnotationFormatError] = AnnotationFormatError,
) -> None:
    """Notes in ``seen`` (key -> position) that ``key`` is at ``position``, or raises
    ``error`` at ``field`` if it already was: "<key> repeats the <of>[<position>]" (``of``
    e.g. ``"id of images"``)."""
    if key in seen:
        raise error(source, field, f"{key} repeats the {of}[{seen[key]}]")
    seen[key] = position
