"""RefCOCO, RefCOCO+ and RefCOCOg referring expressions in the layout of the refer toolkit.

The toolkit (github.com/lichengunc/refer) keeps each dataset in ``<root>/<dataset>/``:
``refs(<splitBy>).p`` (e.g. ``refcoco/refs(unc).p``, ``refcoco+/refs(unc).p``,
``refcocog/refs(umd).p``), a Python pickle of a list of refs, and ``instances.json``, COCO
instances of the train2014 images the refs point into. A ref is::

    {"ref_id": int, "ann_id": int, "image_id": int, "split": "val" | "testA" | ...,
     "sentences": [{"sent": str, "sent_id": int, ...}, ...], ...}

Every sentence refers to the object of annotation ``ann_id``. The pickle is read with an
unpickler that resolves no global name at all (a plain-data pickle of lists, dicts,
strings and numbers needs none), so that no code in the file can run; a JSON file holding
the same list of refs (``.json``) is read too. Malformed files (the refs or the instances)
raise :class:`~sam_lightning.file_io.RefCocoFormatError` naming the file and the field.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sam_lightning.data.coco_format import annotation_where, check_image_size, segmentation_to_rle
from sam_lightning.file_io import (
    RefCocoFormatError,
    check_fields,
    check_unique,
    expected,
    is_int,
    kind_of,
    read_image,
    read_json_object,
)

__all__ = ["DEFAULT_SPLIT_BY", "RefCocoDataset", "load_refs", "refer_paths"]

#: The usual ``splitBy`` of each dataset: UNC's splits of RefCOCO and RefCOCO+ (val, testA,
#: testB), UMD's of RefCOCOg (val, test); RefCOCOg also has Google's (``google``: val).
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
_REF_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ref_id": (is_int, "an int"),
    "ann_id": (is_int, "an int"),
    "image_id": (is_int, "an int"),
    "split": (lambda v: isinstance(v, str), "a split name"),
    "sentences": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of sentences"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, tuples, strings and numbers only: every global (a class or
    function the pickle names, the only way for a pickle to run code) is refused."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="utf-8")  # Python 2 str (the toolkit's) as UTF-8
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        raise RefCocoFormatError(
            self.source,
            "",
            f"refuses to load {module}.{name}: a refs pickle may hold only lists, dicts, "
            "strings and numbers (nothing in the file was run)",
        )


def refer_paths(
    root: str | os.PathLike[str], dataset: str, split_by: str | None = None
) -> tuple[Path, Path]:
    """``(<root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/instances.json)``;
    ``split_by`` defaults to :data:`DEFAULT_SPLIT_BY` of ``dataset``."""
    if split_by is None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise ValueError(
                f"no default splitBy for dataset {dataset!r} (known: {sorted(DEFAULT_SPLIT_BY)}); "
                "give split_by"
            )
        split_by = DEFAULT_SPLIT_BY[dataset]
    folder = Path(root) / dataset
    return folder / f"refs({split_by}).p", folder / "instances.json"


def load_refs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The refs of a ``refs(*).p`` pickle (read safely, see the module docstring) or, for a
    ``.json`` file, of the same list as JSON, checked.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RefCocoFormatError: not a pickle of plain data (or not JSON), not a list, or a ref
            without an int ``ref_id``, ``ann_id`` or ``image_id``, a str ``split``, or a
            non-empty list of ``sentences`` each with a str ``sent`` (and an int
            ``sent_id`` if it has one); repeated ``ref_id``.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs file not found: {path}")
    with open(path, "rb") as handle:
        if path.suffix.lower() == ".json":
            try:
                refs = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RefCocoFormatError(source, "", f"not valid JSON: {error}") from None
        else:
            try:
                refs = _PlainDataUnpickler(handle, source).load()
            except RefCocoFormatError:
                raise
            except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as error:
                raise RefCocoFormatError(source, "", f"not a refs pickle: {error}") from None
    if not isinstance(refs, list):
        raise RefCocoFormatError(source, "", f"expected a list of refs, got {kind_of(refs)}")
    seen: dict[int, int] = {}
    for k, ref in enumerate(refs):
        _check_ref(ref, f"refs[{k}]", source)
        check_unique(
            seen,
            ref["ref_id"],
            k,
            source,
            f"refs[{k}].ref_id",
            "ref_id of refs",
            RefCocoFormatError,
        )
    return refs


def _check_ref(ref: Any, where: str, source: str) -> None:
    check_fields(ref, _REF_FIELDS, source, where, RefCocoFormatError)
    for j, sentence in enumerate(ref["sentences"]):
        at = f"{where}.sentences[{j}]"
        if not isinstance(sentence, dict) or not isinstance(sentence.get("sent"), str):
            raise RefCocoFormatError(source, f"{at}.sent", expected(sentence, 'a {"sent": str}'))
        if "sent_id" in sentence and not is_int(sentence["sent_id"]):
            raise RefCocoFormatError(
                source, f"{at}.sent_id", expected(sentence["sent_id"], "an int")
            )


class RefCocoDataset:
    """Map-style dataset of the images that the refs of one split point into.

    Every item is a dict: ``image`` (H x W x 3 uint8 RGB), ``image_info`` (``image_id``,
    ``width``, ``height``, ``file_name``), ``source`` (for logs) and ``refs``: the image's
    refs in file order, each ``{"ref_id", "ann_id", "image_id", "category_id", "split",
    "sentences": [{"sent": str, "sent_id": int | None}, ...], "segmentation"}`` with the
    annotation's mask as a compressed RLE (``str`` counts). Images are in the order in
    which the refs first name them.

    Args:
        refs: the refs file (see :func:`load_refs`).
        instances: the COCO instances file of the refs (the toolkit's ``instances.json``).
        images: the directory of the images' ``file_name`` (COCO ``train2014``).
        split: keep only the refs of this split (``val``, ``testA``, ``testB``, ``test``,
            ...); None keeps all.

    Raises:
        FileNotFoundError: a file or the image directory does not exist.
        RefCocoFormatError: a bad refs file (see :func:`load_refs`) or instances file (not a
            JSON object with ``images`` and ``annotations``; an image without int ``id``,
            ``width``, ``height`` or ``file_name``); a ref whose ``ann_id`` is no
            annotation of the instances file, or whose ``image_id`` is not its
            annotation's. Reading an item raises RefCocoFormatError for a malformed
            segmentation or an image of another size than the file says.
        ValueError: ``split`` is none of the refs' splits (the message lists them).
    """

    def __init__(
        self,
        refs: str | os.PathLike[str],
        instances: str | os.PathLike[str],
        images: str | os.PathLike[str],
        split: str | None = None,
    ) -> None:
        self.refs_file, self.instances = Path(refs), Path(instances)
        self.images, self.split = Path(images), split
        all_refs = load_refs(self.refs_file)
        if not self.instances.is_file():
            raise FileNotFoundError(f"instances file not found: {self.instances}")
        if not self.images.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.images}")
        chosen = [(k, r) for k, r in enumerate(all_refs) if split is None or r["split"] == split]
        if not chosen:
            splits = sorted({r["split"] for r in all_refs})
            raise ValueError(f"{self.refs_file}: no refs of split {split!r}; its splits: {splits}")
        document = self._load_instances()
        file = str(self.instances)
        wanted = {r["ann_id"] for _, r in chosen}
        anns: dict[int, tuple[int, dict[str, Any]]] = {}  # ann id -> (position, annotation)
        for position, ann in enumerate(document["annotations"]):
            if isinstance(ann, dict) and ann.get("id") in wanted:
                anns[ann["id"]] = (position, ann)
        infos = self._image_infos(document["images"], file)
        self._refs: dict[int, list[dict[str, Any]]] = {}
        for k, ref in chosen:
            if ref["ann_id"] not in anns:
                raise RefCocoFormatError(
                    self.refs_file, f"refs[{k}].ann_id", f"{file} has no annotation {ref['ann_id']}"
                )
            position, ann = anns[ref["ann_id"]]
            if ann.get("image_id") != ref["image_id"]:
                raise RefCocoFormatError(
                    self.refs_file,
                    f"refs[{k}].image_id",
                    f"{ref['image_id']}, but annotation {ref['ann_id']} of {file} is of image "
                    f"{ann.get('image_id')!r}",
                )
            if ref["image_id"] not in infos:
                raise RefCocoFormatError(
                    self.refs_file, f"refs[{k}].image_id", f"{file} has no image {ref['image_id']}"
                )
            self._refs.setdefault(ref["image_id"], []).append(
                {
                    "ref_id": ref["ref_id"],
                    "ann_id": ref["ann_id"],
                    "image_id": ref["image_id"],
                    "category_id": ann.get("category_id"),
                    "split": ref["split"],
                    "sentences": [
                        {"sent": s["sent"], "sent_id": s.get("sent_id")} for s in ref["sentences"]
                    ],
                    "_where": annotation_where(position, ann["id"]),
                    "_segmentation": ann.get("segmentation"),
                }
            )
        self._image_ids = list(self._refs)
        self._infos = {image_id: infos[image_id] for image_id in self._image_ids}

    def _load_instances(self) -> dict[str, Any]:
        file = str(self.instances)
        document = read_json_object(self.instances, error=RefCocoFormatError)
        for field in ("images", "annotations"):
            if not isinstance(document.get(field), list):
                problem = (
                    "missing" if field not in document else expected(document[field], "a list")
                )
                raise RefCocoFormatError(file, field, problem)
        return document

    @staticmethod
    def _image_infos(images: list[Any], file: str) -> dict[int, dict[str, Any]]:
        """``image_id -> {image_id, width, height, file_name}`` of the instances' images."""
        infos = {}
        for k, info in enumerate(images):
            where = f"images[{k}]"
            if not isinstance(info, dict):
                raise RefCocoFormatError(file, where, f"expected an object, got {kind_of(info)}")
            for field in ("id", "width", "height"):
                if not is_int(info.get(field)):
                    problem = "missing" if field not in info else expected(info[field], "an int")
                    raise RefCocoFormatError(file, f"{where}.{field}", problem)
            name = info.get("file_name")
            if not isinstance(name, str) or not name:
                problem = "missing" if "file_name" not in info else expected(name, "a file name")
                raise RefCocoFormatError(file, f"{where}.file_name", problem)
            infos[info["id"]] = {
                "image_id": info["id"],
                "width": info["width"],
                "height": info["height"],
                "file_name": name,
            }
        return infos

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def num_refs(self) -> int:
        """Refs of the split."""
        return sum(map(len, self._refs.values()))

    def image_info(self, index: int) -> dict[str, Any]:
        """``image_id``, ``width``, ``height`` and ``file_name`` of item ``index``."""
        return dict(self._infos[self._image_ids[self._check_index(index)]])

    def read_refs(self, index: int) -> list[dict[str, Any]]:
        """The refs of item ``index`` with their masks (see the class docstring), without
        reading the image. Raises RefCocoFormatError for a malformed segmentation."""
        info = self.image_info(index)
        refs = []
        for ref in self._refs[info["image_id"]]:
            where, segmentation = ref["_where"], ref["_segmentation"]
            if segmentation is None:
                raise RefCocoFormatError(self.instances, f"{where}.segmentation", "missing")
            rle = segmentation_to_rle(
                segmentation,
                info["height"],
                info["width"],
                str(self.instances),
                where,
                RefCocoFormatError,
            )
            public = {key: value for key, value in ref.items() if not key.startswith("_")}
            refs.append({**public, "segmentation": rle})
        return refs

    def __getitem__(self, index: int) -> dict[str, Any]:
        refs = self.read_refs(index)
        info = self.image_info(index)
        path = self.images / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(
                f"image {str(path)!r} of image_id {info['image_id']} in {self.instances} not found"
            )
        image = read_image(path)
        check_image_size(image, info, path, self.instances, RefCocoFormatError)
        source = f"{path} (image_id {info['image_id']} in {self.instances})"
        return {"image": image, "image_info": info, "refs": refs, "source": source}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(len(self)))

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return int(index) % len(self)

    def __repr__(self) -> str:
        split = "all splits" if self.split is None else f"split {self.split}"
        return (
            f"{type(self).__name__}({self.num_refs} refs of {len(self)} images, {split}, from "
            f"{self.refs_file} and {self.instances}, images in {self.images})"
        )
