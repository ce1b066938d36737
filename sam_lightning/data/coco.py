"""COCO-format and LVIS instance annotations as training datasets in the SA-1B item layout.

One JSON file describes a whole dataset, in the layout of COCO's ``instances_*.json`` (see
:mod:`sam_lightning.data.coco_format`, which checks it). Items of :class:`CocoDataset`
convert every ``segmentation`` (polygons, an uncompressed or a compressed RLE) to a
compressed RLE, exactly as ``pycocotools.coco.COCO.annToRLE`` does, so that they are
:class:`~sam_lightning.data.sa1b.SA1BSample` dicts that
:class:`~sam_lightning.data.samples.SampleTransform` consumes.

:class:`LvisDataset` reads LVIS v1 files: the same layout, but images name their file by
``coco_url`` only (LVIS reuses COCO 2017's images) and annotations have no ``iscrowd``.

Polygons and uncompressed RLEs need ``pycocotools`` (imported when first needed).
Malformed files raise :class:`~sam_lightning.file_io.CocoFormatError`, naming the file,
the annotation (its position and ``id``) and the field.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sam_lightning.data.coco_format import (
    annotation_where,
    check_image_size,
    coco_file_name,
    index_instances,
    lvis_file_name,
    read_annotation,
    read_instances,
)
from sam_lightning.data.sa1b import SA1BSample
from sam_lightning.file_io import CocoFormatError, expected, is_int, is_number, read_image

__all__ = ["CocoDataset", "LvisDataset"]


class CocoDataset:
    """Map-style dataset of the images of a COCO-format instances file and their masks.

    Every item is an :class:`~sam_lightning.data.sa1b.SA1BSample` dict, like the items of
    :class:`~sam_lightning.data.sa1b_dataset.SA1BDataset`: ``image`` (H x W x 3 uint8 RGB; grayscale
    and CMYK images are converted), ``annotations`` (the image's annotations, in file order,
    with every field of the file, ``segmentation`` replaced by a compressed RLE with ``str``
    counts, and ``area`` and ``bbox`` computed from the mask where the file has none),
    ``image_info`` (``image_id``, ``width``, ``height``, ``file_name``) and ``source``.

    Only the images with at least one usable annotation (one that the filters below keep)
    are items: an image without masks gives no training signal, and a dataset of them would
    spend steps on nothing. So ``len(dataset)`` depends on the filters.

    The index (image ids, sizes, file names, and each image's annotations pickled into one
    byte buffer) is kept in NumPy arrays, so DataLoader workers share it without copying;
    segmentations are converted when an item is read.

    Args:
        annotations: the JSON file.
        images: the directory that the images' ``file_name`` is relative to.
        skip_crowd: leave out ``iscrowd=1`` annotations (regions of many objects, not
            instances). With ``False`` they are kept as masks.
        min_area: leave out annotations whose ``area`` (the file's: the polygon area for
            COCO polygons; else the mask's pixel count) is below this.
        category_ids: keep only annotations of these categories (default: all).

    Raises:
        FileNotFoundError: ``annotations`` or ``images`` does not exist.
        CocoFormatError: the file is not JSON, lacks ``images`` or ``annotations``, has an
            image without ``id``, ``width``, ``height`` or its file name, repeated image or
            annotation ids, or an annotation without ``id`` or whose ``image_id`` is not an
            image of the file (see :func:`~sam_lightning.data.coco_format.index_instances`;
            and, for the filters, a bad ``iscrowd`` or a missing ``category_id``).
        ValueError: ``category_ids`` names a category that the file's ``categories`` lacks.
        Reading an item raises CocoFormatError for a malformed annotation (a segmentation
        of the wrong type, a polygon with an odd number of coordinates or fewer than 3
        points, an RLE whose ``size`` is not the image's, a bad ``area`` or ``bbox``) or an
        image of another size than the file says, FileNotFoundError for a missing image
        and ValueError for an unreadable one, so that
        :class:`~sam_lightning.data.samples.SkipBadSamples` skips just that image.
        ImportError: a polygon or uncompressed RLE is read without pycocotools.

    Attributes:
        categories: the file's ``categories`` as it is (unchecked; None when absent).
        not_exhaustive_category_ids: image id -> that image's ``not_exhaustive_category_ids``
            as in the file (unchecked), for the images that have it (LVIS).
    """

    #: The format's name in error messages.
    kind = "COCO"

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        images: str | os.PathLike[str],
        skip_crowd: bool = True,
        min_area: float = 0.0,
        category_ids: Iterable[int] | None = None,
    ) -> None:
        self.annotations = Path(annotations)
        self.images = Path(images)
        self.skip_crowd, self.min_area = bool(skip_crowd), float(min_area)
        self.category_ids = None if category_ids is None else sorted(set(category_ids))
        self._category_set = None if category_ids is None else set(self.category_ids)
        if not self.annotations.is_file():
            raise FileNotFoundError(f"{self.kind} annotation file not found: {self.annotations}")
        if not self.images.is_dir():
            raise FileNotFoundError(f"{self.kind} image directory not found: {self.images}")
        file = str(self.annotations)
        document = read_instances(self.annotations, self.kind)
        self.categories: Any = document.get("categories")
        self._check_categories(document, file)
        index = index_instances(document, file, self._file_name, self._keep)
        del document
        self.not_exhaustive_category_ids: dict[int, Any] = index.not_exhaustive_category_ids
        usable = [k for k, anns in enumerate(index.annotations) if anns]
        kept = index.annotations
        blobs = [pickle.dumps(kept[k], protocol=pickle.HIGHEST_PROTOCOL) for k in usable]
        self._image_ids = np.array([index.image_ids[k] for k in usable], dtype=np.int64)
        self._sizes = np.array(
            [(index.heights[k], index.widths[k]) for k in usable], dtype=np.int64
        )
        self._sizes = self._sizes.reshape(-1, 2)
        self._file_names = np.array([index.file_names[k] for k in usable], dtype=str)
        del index, kept
        self._offsets = np.zeros(len(usable) + 1, dtype=np.int64)
        np.cumsum([len(blob) for blob in blobs], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    # ---------------------------------------------------------------- construction

    #: ``(images[k] entry, file, where) -> the image's path relative to images``.
    _file_name = staticmethod(coco_file_name)

    def _check_categories(self, document: dict[str, Any], file: str) -> None:
        categories = document.get("categories")
        if self.category_ids is None or not isinstance(categories, list):
            return
        known = {c.get("id") for c in categories if isinstance(c, dict)}
        unknown = [c for c in self.category_ids if c not in known]
        if unknown:
            raise ValueError(f"{file}: category_ids {unknown} are not in its categories")

    def _keep(self, ann: dict[str, Any], where: str) -> bool:
        """Whether the filters keep an annotation (its contents are checked when read)."""
        file = str(self.annotations)
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise CocoFormatError(file, f"{where}.iscrowd", expected(crowd, "0 or 1"))
        if crowd and self.skip_crowd:
            return False
        if self._category_set is not None:
            if not is_int(ann.get("category_id")):
                raise CocoFormatError(
                    file, f"{where}.category_id", expected(ann.get("category_id"), "an int")
                )
            if ann["category_id"] not in self._category_set:
                return False
        area = ann.get("area")  # a missing or bad area is dealt with when read
        return not (self.min_area > 0 and is_number(area) and area < self.min_area)

    # ---------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._image_ids)

    def image_info(self, index: int) -> dict[str, Any]:
        """``image_id``, ``width``, ``height`` and ``file_name`` (as in the JSON file; for
        LVIS the name derived from ``coco_url``) of item ``index``."""
        index = self._check_index(index)
        height, width = self._sizes[index].tolist()
        return {
            "image_id": int(self._image_ids[index]),
            "width": width,
            "height": height,
            "file_name": str(self._file_names[index]),
        }

    def image_path(self, index: int) -> Path:
        """The image file of item ``index`` (it may not exist)."""
        return self._candidates(self._check_index(index))[0]

    def _candidates(self, index: int) -> list[Path]:
        """Where the image of item ``index`` may be, in the order tried."""
        return [self.images / str(self._file_names[index])]

    def source(self, index: int) -> str:
        """The image file of item ``index`` and its id in the annotation file (for logs)."""
        index = self._check_index(index)
        return self._source(self.image_path(index), int(self._image_ids[index]))

    def _source(self, path: Path, image_id: int) -> str:
        return f"{path} (image_id {image_id} in {self.annotations})"

    def read_annotations(self, index: int) -> list[dict[str, Any]]:
        """The annotations of item ``index`` with compressed-RLE segmentations (see the class
        docstring), without reading the image. Raises CocoFormatError for a malformed one."""
        index = self._check_index(index)
        height, width = self._sizes[index].tolist()
        start, end = self._offsets[index : index + 2].tolist()
        stored: list[tuple[int, dict[str, Any]]] = pickle.loads(self._buffer[start:end].data)
        file = str(self.annotations)
        annotations = []
        missing: list[int] = []  # annotations without area or bbox
        for position, ann in stored:
            ann = read_annotation(ann, height, width, file, annotation_where(position, ann["id"]))
            if "area" not in ann or "bbox" not in ann:
                missing.append(len(annotations))
            annotations.append(ann)
        if missing:
            self._fill_area_bbox([annotations[i] for i in missing])
            if self.min_area > 0:
                annotations = [a for a in annotations if a["area"] >= self.min_area]
        return annotations

    @staticmethod
    def _fill_area_bbox(annotations: list[dict[str, Any]]) -> None:
        """Sets a missing ``area`` (pixel count) and ``bbox`` (tight box) from the masks."""
        from sam_lightning.ops import rle_area, rle_to_bbox

        rles = [ann["segmentation"] for ann in annotations]
        areas, boxes = rle_area(rles).tolist(), rle_to_bbox(rles).tolist()
        for ann, area, box in zip(annotations, areas, boxes):
            ann.setdefault("area", area)
            ann.setdefault("bbox", box)

    def __getitem__(self, index: int) -> SA1BSample:
        index = self._check_index(index)
        annotations = self.read_annotations(index)
        info = self.image_info(index)
        candidates = self._candidates(index)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            tried = " or ".join(repr(str(p)) for p in candidates)
            raise FileNotFoundError(
                f"image {tried} of image_id {info['image_id']} in {self.annotations} not found"
            )
        image = read_image(path)
        check_image_size(image, info, path, self.annotations)
        info["file_name"] = path.relative_to(self.images).as_posix()
        return {
            "image": image,
            "annotations": annotations,
            "image_info": info,
            "source": self._source(path, info["image_id"]),
        }

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return int(index) % len(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images from {self.annotations}, "
            f"images in {self.images})"
        )


class LvisDataset(CocoDataset):
    """Map-style dataset of an LVIS (v1) instances file: :class:`CocoDataset` (same arguments,
    items and errors) for LVIS's layout.

    LVIS images have a ``coco_url`` and no ``file_name``: the file is the last two parts of
    the URL, e.g. ``http://images.cocodataset.org/val2017/000000397133.jpg`` gives
    ``val2017/000000397133.jpg`` (LVIS v1 reuses COCO 2017's train and val images, and its
    val set has images of COCO's train2017). It is looked for at ``images/<split>/<name>``,
    then ``images/<name>``, so ``images`` may be the directory holding ``train2017/`` and
    ``val2017/`` or one with all the images. An image with a ``file_name`` and no
    ``coco_url`` (LVIS v0.5) uses its ``file_name``. LVIS annotations have no ``iscrowd``.
    """

    kind = "LVIS"

    _file_name = staticmethod(lvis_file_name)

    def _candidates(self, index: int) -> list[Path]:
        name = str(self._file_names[index])
        candidates = [self.images / name]
        if "/" in name:
            candidates.append(self.images / name.rpartition("/")[2])
        return candidates

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``: the first candidate that exists, else the
        first (``images/<split>/<name>``)."""
        candidates = self._candidates(self._check_index(index))
        return next((p for p in candidates if p.is_file()), candidates[0])
