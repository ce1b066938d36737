"""File I/O shared by every layer: atomic writes, images, JSON objects and the errors of
malformed annotation files.

Atomic writes go through :func:`atomic_path`: a temporary ``.<name>.<12 hex>.tmp`` next to
the target, fsynced, then ``os.replace`` d over it, so a reader sees the old file or the
whole new one and an interrupted write leaves only a temporary file that
:func:`is_temp_file` recognises and :func:`remove_temp_files` cleans up.

Images are decoded by Pillow to H x W x 3 uint8 RGB with the EXIF orientation applied (as
OpenCV's ``imread`` does; 16-bit images shifted down 8 bits, 32-bit ones refused); a file
Pillow cannot decode raises :class:`UnreadableImageError`, and so does one with more pixels
than the reader's ``max_image_pixels`` (:class:`ImageTooLargeError`).

Annotation files (SA-1B, COCO, LVIS, RefCOCO) raise a subclass of
:class:`AnnotationFormatError`, which names the file, the field and the problem. The small
validators (:func:`is_int`, :func:`is_number`, :func:`expected`, ...) are what their
parsers check values with.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
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


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 24) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks (e.g. a base checkpoint's
    identity, recorded by the adapters trained on it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_if_absent(path: str | os.PathLike[str], data: bytes) -> None:
    """Creates ``path`` holding ``data`` unless it exists, atomically and safely when several
    processes try at once: the data goes to a temporary file that is hard-linked into place
    (the link fails if another process came first). On file systems without hard links the
    file is created exclusively and written (readers retry a partly written one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it: the caller compares with it
        except OSError:  # no hard links here (some FUSE and network file systems)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        tmp.unlink(missing_ok=True)


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


class ImageTooLargeError(UnreadableImageError):
    """An image with more pixels than the reader's ``max_image_pixels`` (Pillow's guard
    against decompression bombs); ``pixels`` is its pixel count (None if Pillow did not say),
    ``limit`` the limit."""

    def __init__(self, source: str | os.PathLike[str], pixels: int | None, limit: int) -> None:
        self.pixels, self.limit = pixels, limit
        count = "more pixels than" if pixels is None else f"{pixels} pixels, more than"
        super().__init__(
            source,
            f"{count} the limit of {limit} (a possible decompression bomb); raise the limit "
            f"if the image is trusted: max_image_pixels=<pixels> or null (amg), "
            f"--max-image-pixels <pixels> or none (segment)",
        )


#: The reader's default pixel limit: Pillow's ``Image.MAX_IMAGE_PIXELS`` when this module was
#: imported (Pillow's default, 89,478,485 pixels, unless changed before). Changing
#: ``Image.MAX_IMAGE_PIXELS`` later does not change it; pass ``max_image_pixels`` instead.
DEFAULT_MAX_IMAGE_PIXELS: int | None = Image.MAX_IMAGE_PIXELS

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PILLOW_LIMIT_LOCK = threading.Lock()
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def check_max_image_pixels(value: Any) -> int | None:
    """``value`` if it is a valid ``max_image_pixels`` (an int >= 1, or None for no limit);
    else ValueError."""
    if value is None or (is_int(value) and value >= 1):
        return value
    raise ValueError(f"max_image_pixels must be a number of pixels >= 1 or None, got {value!r}")


@contextmanager
def _pillow_check(max_image_pixels: int | None) -> Iterator[None]:
    """Pillow's own decompression-bomb check, which reads the process-wide
    ``Image.MAX_IMAGE_PIXELS`` (a warning above it, an error above twice it), made no
    stricter than ``max_image_pixels`` for this block: its warning is silenced (the reader
    checks the size itself) and, for a limit above Pillow's or None, Pillow's limit is None
    until the block ends. Under a lock, so that readers in several threads of a process
    restore the same state; other processes are not affected."""
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        lift = _lifts_pillow_limit(max_image_pixels)
        if lift:
            Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            if lift:
                Image.MAX_IMAGE_PIXELS = saved


def _lifts_pillow_limit(max_image_pixels: int | None) -> bool:
    """Whether ``max_image_pixels`` allows more pixels than Pillow's own limit."""
    pillow = Image.MAX_IMAGE_PIXELS
    return pillow is not None and (max_image_pixels is None or max_image_pixels > pillow)


def _is_sixteen_bit(image: Image.Image) -> bool:
    return image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG")


def _check_depth(image: Image.Image, source: str | os.PathLike[str]) -> None:
    """UnreadableImageError for the 32-bit images :func:`decode_image` refuses."""
    if (image.mode == "F" or image.mode.startswith("I")) and not _is_sixteen_bit(image):
        kind = {"F": "32-bit floating-point", "I": "32-bit integer"}.get(image.mode, "integer")
        raise UnreadableImageError(
            source,
            f"{kind} samples (Pillow mode {image.mode}) have no defined 8-bit scale; "
            "convert the image to 8 or 16 bits per channel",
        )


def _to_rgb(image: Image.Image) -> np.ndarray:
    """The H x W x 3 uint8 RGB array of a decoded image (see :func:`decode_image`)."""
    if _is_sixteen_bit(image):
        grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def decode_image(
    data: bytes,
    source: str | os.PathLike[str],
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decodes image bytes to an H x W x 3 uint8 RGB array, EXIF orientation applied, as
    OpenCV's ``imread(path, IMREAD_COLOR)`` does (but RGB, not BGR):

    - 8-bit images: as stored; grey, palette and CMYK images converted to RGB, alpha dropped.
    - 16-bit images (Pillow modes ``I;16``, ``I;16B``, ...; ``I`` for a PNG, which is how
      older Pillow versions give 16-bit grey PNGs): each value shifted down 8 bits
      (``value >> 8``), grey copied to the three channels. Pillow itself reads 16-bit
      RGB(A) PNGs and TIFFs as 8-bit RGB(A) by the same shift.
    - 32-bit images, integer (mode ``I``, e.g. a TIFF) or float (mode ``F``), are refused:
      UnreadableImageError naming the file and the mode. Their value range is not defined
      (a float image may hold [0, 1], [0, 255] or any measurement), so no one scaling to
      8 bits would be right; convert such files first.

    Images with more than ``max_image_pixels`` pixels (default
    :data:`DEFAULT_MAX_IMAGE_PIXELS`, Pillow's decompression-bomb limit; None: no limit) are
    refused with :class:`ImageTooLargeError` from their header, before any pixel is
    decoded. The limit is this call's own: ``Image.MAX_IMAGE_PIXELS`` is left as it is, except
    during a decode whose limit is above it (see :func:`_pillow_check`).

    Raises UnreadableImageError (a ValueError) naming ``source``; ValueError for an invalid
    ``max_image_pixels``."""
    check_max_image_pixels(max_image_pixels)
    try:
        with _pillow_check(max_image_pixels):
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if max_image_pixels is not None and width * height > max_image_pixels:
                raise ImageTooLargeError(source, width * height, max_image_pixels)
            _check_depth(image, source)
            # Pillow checks sizes again while decoding some formats (TIFF tiles, GIF frames)
            lift = _lifts_pillow_limit(max_image_pixels)
            with _pillow_check(max_image_pixels) if lift else nullcontext():
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit: at most ours
        found = _BOMB_PIXELS.search(str(error))
        pillow = Image.MAX_IMAGE_PIXELS
        limit = max_image_pixels if max_image_pixels is not None else 2 * (pillow or 0)
        raise ImageTooLargeError(source, int(found[1]) if found else None, limit) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(source, "not an image in a format Pillow reads") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated, corrupt
        raise UnreadableImageError(source, str(error) or type(error).__name__) from None


def read_image(
    path: str | os.PathLike[str], max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Reads an image file as :func:`decode_image` does (with its ``max_image_pixels``).
    Raises FileNotFoundError ("image file not found: <path>") or another OSError if the file
    cannot be read, and UnreadableImageError if it is not an image, or one this reader
    refuses (too many pixels, 32-bit samples)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as handle:
        return decode_image(handle.read(), path, max_image_pixels)


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
