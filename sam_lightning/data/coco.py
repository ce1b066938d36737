"""COCO-format and LVIS instance annotations as training datasets in the SA-1B item layout.

One JSON file describes a whole dataset, in the layout of COCO's ``instances_*.json``::

    {"images": [{"id": int, "width": int, "height": int, "file_name": str, ...}, ...],
     "annotations": [{"id": int, "image_id": int, "segmentation": ..., "area": float,
                      "bbox": [x, y, w, h], "iscrowd": 0 | 1, "category_id": int}, ...],
     "categories": [{"id": int, "name": str, ...}, ...]}

``segmentation`` is one of the three forms ``pycocotools.coco.COCO.annToRLE`` reads:
polygons (a list of ``[x0, y0, x1, y1, ...]`` lists), an uncompressed RLE (``counts`` a list
of run lengths, COCO's ``iscrowd`` annotations) or a compressed RLE (``counts`` a string).
Items of :class:`CocoDataset` convert them all to compressed RLEs, exactly as ``annToRLE``
does, so that they are :class:`~sam_lightning.data.sa1b.SA1BSample` dicts that
:class:`~sam_lightning.data.train_transforms.TrainTransform` consumes.

:class:`LvisDataset` reads LVIS v1 files: the same layout, but images name their file by
``coco_url`` only (LVIS reuses COCO 2017's images) and annotations have no ``iscrowd``.

Polygons and uncompressed RLEs need ``pycocotools`` (imported when first needed).
Malformed files raise :class:`~sam_lightning.data.sa1b.SA1BFormatError`, naming the file,
the annotation (its position and ``id``) and the field.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import numpy as np

from sam_lightning.data.sa1b import (
    SA1BFormatError,
    SA1BSample,
    _bad,
    _is_int,
    _is_number,
    _kind,
    read_image,
    read_json_object,
)

__all__ = ["CocoDataset", "LvisDataset"]


def _pycocotools_mask() -> ModuleType:
    """``pycocotools.mask``, or an ImportError saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError as error:
        raise ImportError(
            "reading COCO polygons and uncompressed RLEs needs pycocotools: pip install pycocotools"
        ) from error
    return mask


# --------------------------------------------------------------------------- validation


def _where(position: int, ann_id: Any) -> str:
    """How error messages name an annotation: its position in the file and its id."""
    return f"annotations[{position}] (id {ann_id})"


def _to_rle(seg: Any, height: int, width: int, file: str, where: str) -> dict[str, Any]:
    """A segmentation in any of COCO's three forms as a compressed RLE with ``str`` counts
    (what ``COCO.annToRLE`` computes). Raises SA1BFormatError for a malformed one."""
    field = f"{where}.segmentation"
    if isinstance(seg, list):  # polygons
        if not seg:
            raise SA1BFormatError(file, field, "an empty list of polygons")
        for k, polygon in enumerate(seg):
            if not isinstance(polygon, list):
                raise SA1BFormatError(
                    file, f"{field}[{k}]", _bad(polygon, "a polygon [x0, y0, x1, y1, ...]")
                )
            if not all(_is_number(v) for v in polygon):
                raise SA1BFormatError(file, f"{field}[{k}]", "polygon coordinates must be numbers")
            if len(polygon) % 2:
                raise SA1BFormatError(
                    file, f"{field}[{k}]", f"odd number of coordinates ({len(polygon)})"
                )
            if len(polygon) < 6:
                raise SA1BFormatError(
                    file, f"{field}[{k}]", f"{len(polygon) // 2} points; a polygon needs >= 3"
                )
        mask = _pycocotools_mask()
        rle = mask.merge(mask.frPyObjects(seg, height, width))
    elif isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise SA1BFormatError(file, field, _bad(seg, 'an RLE {"size": [h, w], "counts": ...}'))
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise SA1BFormatError(file, f"{field}.size", _bad(size, "[height, width]"))
        if size != [height, width]:
            raise SA1BFormatError(
                file,
                f"{field}.size",
                f"{size} differs from the image's [height, width] {[height, width]}",
            )
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if not all(_is_int(v) and v >= 0 for v in counts):
                raise SA1BFormatError(file, f"{field}.counts", "run lengths must be ints >= 0")
            if sum(counts) != height * width:
                raise SA1BFormatError(
                    file,
                    f"{field}.counts",
                    f"run lengths sum to {sum(counts)}, not height * width = {height * width}",
                )
            rle = _pycocotools_mask().frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):  # compressed RLE: passed through
            rle = {"size": size, "counts": counts}
        else:
            raise SA1BFormatError(
                file, f"{field}.counts", _bad(counts, "a string or a list of run lengths")
            )
    else:
        raise SA1BFormatError(
            file,
            field,
            f"expected polygons (a list of lists) or an RLE (an object), got {_kind(seg)}",
        )
    counts = rle["counts"]
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise SA1BFormatError(file, f"{field}.counts", "not an ASCII RLE string") from None
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def _check_number(ann: dict[str, Any], field: str, file: str, where: str) -> None:
    if field in ann and not (_is_number(ann[field]) and ann[field] >= 0):
        raise SA1BFormatError(file, f"{where}.{field}", _bad(ann[field], "a number >= 0"))


# ------------------------------------------------------------------------------ dataset


class CocoDataset:
    """Map-style dataset of the images of a COCO-format instances file and their masks.

    Every item is an :class:`~sam_lightning.data.sa1b.SA1BSample` dict, like the items of
    :class:`~sam_lightning.data.sa1b.SA1BDataset`: ``image`` (H x W x 3 uint8 RGB; grayscale
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
        SA1BFormatError: the file is not JSON, lacks ``images`` or ``annotations``, has an
            image without ``id``, ``width``, ``height`` or its file name, repeated image or
            annotation ids, or an annotation without ``id`` or whose ``image_id`` is not an
            image of the file (and, for the filters, a bad ``iscrowd`` or a missing
            ``category_id``).
        ValueError: ``category_ids`` names a category that the file's ``categories`` lacks.
        Reading an item raises SA1BFormatError for a malformed annotation (a segmentation
        of the wrong type, a polygon with an odd number of coordinates or fewer than 3
        points, an RLE whose ``size`` is not the image's, a bad ``area`` or ``bbox``) or an
        image of another size than the file says, FileNotFoundError for a missing image
        and ValueError for an unreadable one, so that
        :class:`~sam_lightning.data.train_transforms.SkipBadSamples` skips just that image.
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
        document = self._load()
        self.categories: Any = document.get("categories")
        self.not_exhaustive_category_ids: dict[int, Any] = {}
        file = str(self.annotations)
        self._check_categories(document, file)

        rows: dict[int, int] = {}  # image id -> position in the index
        image_ids, heights, widths, names = [], [], [], []
        for k, info in enumerate(document["images"]):
            where = f"images[{k}]"
            if not isinstance(info, dict):
                raise SA1BFormatError(file, where, f"expected an object, got {_kind(info)}")
            for field in ("id", "width", "height"):
                if field not in info:
                    raise SA1BFormatError(file, f"{where}.{field}", "missing")
            if not _is_int(info["id"]):
                raise SA1BFormatError(file, f"{where}.id", _bad(info["id"], "an int"))
            for field in ("width", "height"):
                if not _is_int(info[field]) or info[field] < 1:
                    raise SA1BFormatError(
                        file, f"{where}.{field}", _bad(info[field], "an int >= 1")
                    )
            if info["id"] in rows:
                raise SA1BFormatError(
                    file,
                    f"{where}.id",
                    f"{info['id']} repeats the id of images[{rows[info['id']]}]",
                )
            rows[info["id"]] = k
            if "not_exhaustive_category_ids" in info:
                self.not_exhaustive_category_ids[info["id"]] = info["not_exhaustive_category_ids"]
            image_ids.append(info["id"])
            heights.append(info["height"])
            widths.append(info["width"])
            names.append(self._file_name(info, file, where))

        kept: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in image_ids]
        seen: dict[int, int] = {}  # annotation id -> position
        for position, ann in enumerate(document["annotations"]):
            if not isinstance(ann, dict):
                raise SA1BFormatError(
                    file, f"annotations[{position}]", f"expected an object, got {_kind(ann)}"
                )
            if "id" not in ann or not _is_int(ann["id"]):
                raise SA1BFormatError(
                    file, f"annotations[{position}].id", _bad(ann.get("id"), "an int")
                )
            where = _where(position, ann["id"])
            if ann["id"] in seen:
                raise SA1BFormatError(
                    file, f"{where}.id", f"repeats the id of annotations[{seen[ann['id']]}]"
                )
            seen[ann["id"]] = position
            image_id = ann.get("image_id")
            if not _is_int(image_id) or image_id not in rows:
                problem = "missing" if "image_id" not in ann else f"no image has id {image_id!r}"
                raise SA1BFormatError(file, f"{where}.image_id", problem)
            if self._keep(ann, file, where):
                kept[rows[image_id]].append((position, ann))

        usable = [k for k, anns in enumerate(kept) if anns]
        blobs = [pickle.dumps(kept[k], protocol=pickle.HIGHEST_PROTOCOL) for k in usable]
        del document, kept
        self._image_ids = np.array([image_ids[k] for k in usable], dtype=np.int64)
        self._sizes = np.array([(heights[k], widths[k]) for k in usable], dtype=np.int64)
        self._sizes = self._sizes.reshape(-1, 2)
        self._file_names = np.array([names[k] for k in usable], dtype=str)
        self._offsets = np.zeros(len(usable) + 1, dtype=np.int64)
        np.cumsum([len(blob) for blob in blobs], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    # ---------------------------------------------------------------- construction

    def _load(self) -> dict[str, Any]:
        file = str(self.annotations)
        document = read_json_object(self.annotations)
        for field in ("images", "annotations"):
            if field not in document:
                raise SA1BFormatError(file, field, f"missing; not a {self.kind} instances file")
            if not isinstance(document[field], list):
                raise SA1BFormatError(file, field, f"expected a list, got {_kind(document[field])}")
        return document

    def _check_categories(self, document: dict[str, Any], file: str) -> None:
        categories = document.get("categories")
        if self.category_ids is None or not isinstance(categories, list):
            return
        known = {c.get("id") for c in categories if isinstance(c, dict)}
        unknown = [c for c in self.category_ids if c not in known]
        if unknown:
            raise ValueError(f"{file}: category_ids {unknown} are not in its categories")

    def _file_name(self, info: dict[str, Any], file: str, where: str) -> str:
        """The image's path relative to :attr:`images`, from its ``images[k]`` entry."""
        name = info.get("file_name")
        if not isinstance(name, str) or not name:
            problem = "missing" if "file_name" not in info else _bad(name, "a file name")
            raise SA1BFormatError(file, f"{where}.file_name", problem)
        return name

    def _keep(self, ann: dict[str, Any], file: str, where: str) -> bool:
        """Whether the filters keep an annotation (its contents are checked when read)."""
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise SA1BFormatError(file, f"{where}.iscrowd", _bad(crowd, "0 or 1"))
        if crowd and self.skip_crowd:
            return False
        if self._category_set is not None:
            if not _is_int(ann.get("category_id")):
                raise SA1BFormatError(
                    file, f"{where}.category_id", _bad(ann.get("category_id"), "an int")
                )
            if ann["category_id"] not in self._category_set:
                return False
        area = ann.get("area")  # a missing or bad area is dealt with when read
        return not (self.min_area > 0 and _is_number(area) and area < self.min_area)

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
        docstring), without reading the image. Raises SA1BFormatError for a malformed one."""
        index = self._check_index(index)
        height, width = self._sizes[index].tolist()
        start, end = self._offsets[index : index + 2].tolist()
        stored: list[tuple[int, dict[str, Any]]] = pickle.loads(self._buffer[start:end].data)
        file = str(self.annotations)
        annotations = []
        missing: list[int] = []  # annotations without area or bbox
        for position, ann in stored:
            where = _where(position, ann["id"])
            if "segmentation" not in ann:
                raise SA1BFormatError(file, f"{where}.segmentation", "missing")
            ann = dict(ann, segmentation=_to_rle(ann["segmentation"], height, width, file, where))
            _check_number(ann, "area", file, where)
            bbox = ann.get("bbox")
            if "bbox" in ann and not (
                isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
            ):
                raise SA1BFormatError(file, f"{where}.bbox", _bad(bbox, "[x, y, w, h]"))
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
        if list(image.shape[:2]) != [info["height"], info["width"]]:
            raise SA1BFormatError(
                str(self.annotations),
                f"image_id {info['image_id']}: height/width",
                f"[{info['height']}, {info['width']}] but the image {str(path)!r} is "
                f"{image.shape[0]} x {image.shape[1]} (height x width)",
            )
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

    def _file_name(self, info: dict[str, Any], file: str, where: str) -> str:
        url = info.get("coco_url")
        if url is None and "file_name" in info:
            return super()._file_name(info, file, where)
        if not isinstance(url, str) or not url:
            problem = "missing" if url is None else _bad(url, "a URL")
            raise SA1BFormatError(file, f"{where}.coco_url", problem)
        parts = [p for p in PurePosixPath(urlparse(url).path).parts if p != "/"]
        if not parts or parts[-1] in (".", ".."):
            raise SA1BFormatError(file, f"{where}.coco_url", f"no file name in {url!r}")
        return "/".join(parts[-2:])

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
