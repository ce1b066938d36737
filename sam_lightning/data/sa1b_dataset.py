"""Datasets in the SA-1B layout (:mod:`sam_lightning.data.sa1b`): directories of JSON files,
the extracted SA-1B release (``sa_<n>.jpg`` next to ``sa_<n>.json``) and the SA-1B ``.tar``
archives read in place, without extracting them.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam_lightning.data.sa1b import (
    LOGS_DIR,
    SUMMARY_NAME,
    SA1BSample,
    parse_sa1b_json,
    read_sa1b_json,
)
from sam_lightning.file_io import IMAGE_EXTENSIONS, SA1BFormatError, decode_image, read_image

if TYPE_CHECKING:
    import torch


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
        subdirs[:] = sorted(
            d for d in subdirs if recursive and not d.startswith(".") and d != LOGS_DIR
        )
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
