"""The queries of the text-to-mask evaluation: an image, its texts and their ground truth.

Two sources, each giving one :class:`TextSample` per image:

- ``text_coco`` (COCO or LVIS instances, :class:`CocoTextQueries`): one query per image and
  category present in it; the text is the category's ``name`` (LVIS: ``_`` read as a
  space) put into ``prompt_template`` (``"{}"``: the name alone, e.g. ``"a photo of a {}"``),
  the ground truth the union of the category's instance masks in the image. COCO crowd
  regions (``iscrowd=1``) are pixels of their category, so they are part of the union by
  default (``include_crowd``): a model that segments every person of a crowd is right. LVIS
  categories that an image lists as ``not_exhaustive_category_ids`` (not every instance is
  annotated, so the union misses objects) are left out by default (``skip_not_exhaustive``)
  and counted.
- ``text_refcoco`` (RefCOCO/+/g in the refer toolkit's layout, :class:`RefCocoTextQueries`):
  every sentence of every ref of a split is one query, its ground truth the ref's
  annotation mask.

Malformed ``categories`` raise :class:`~sam_lightning.file_io.CocoFormatError`; the datasets
raise their own errors (:mod:`sam_lightning.data.coco`, :mod:`sam_lightning.data.refcoco`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from sam_lightning.file_io import CocoFormatError, expected, is_int

if TYPE_CHECKING:
    from sam_lightning.data.coco import CocoDataset
    from sam_lightning.data.refcoco import RefCocoDataset

#: The refer toolkit's image directory under its data root (COCO train2014).
REFER_IMAGES = Path("images", "mscoco", "images", "train2014")


@dataclass
class TextSample:
    """One image and its Q text queries.

    Attributes:
        image: ``H×W×3`` uint8 RGB.
        image_id: the image's id (of the records).
        texts: the Q query texts, as given to the text encoder.
        gt_masks: ``Q×H×W`` bool ground truth of each query.
        fields: per query, the fields its record starts with after ``image_id`` (e.g.
            ``category_id``).
        skipped: queries that the source left out, by reason (``num_skipped_<reason>``).
    """

    image: np.ndarray
    image_id: int
    texts: list[str]
    gt_masks: Tensor
    fields: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)


def check_template(template: Any) -> str:
    """``template`` if it is a string with exactly one ``{}`` (where the name goes)."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(
            f"prompt_template must be a string with exactly one {{}}, e.g. 'a photo of a {{}}', "
            f"got {template!r}"
        )
    return template


def read_categories(
    dataset: CocoDataset, lvis: bool = False
) -> tuple[dict[int, str], dict[int, set[int]]]:
    """``(category id -> query name, image id -> not-exhaustive category ids)`` of a COCO or
    LVIS dataset, from what it read of its instances file. LVIS names read ``_`` as a space
    (``traffic_light``: "traffic light"). Raises CocoFormatError for missing or malformed
    ``categories`` (an int ``id`` and a non-empty str ``name`` each) or
    ``not_exhaustive_category_ids`` (a list of ints)."""
    file = str(dataset.annotations)
    categories = dataset.categories
    if not isinstance(categories, list):
        problem = "missing" if categories is None else expected(categories, "a list")
        raise CocoFormatError(file, "categories", f"{problem}; text queries need the names")
    names = {}
    for k, category in enumerate(categories):
        if not isinstance(category, dict) or not is_int(category.get("id")):
            raise CocoFormatError(file, f"categories[{k}].id", expected(category, "an int id"))
        name = category.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CocoFormatError(file, f"categories[{k}].name", expected(name, "a name"))
        names[category["id"]] = name.replace("_", " ") if lvis else name
    not_exhaustive = {}
    for image_id, ids in dataset.not_exhaustive_category_ids.items():
        if not (isinstance(ids, list) and all(is_int(c) for c in ids)):
            where = f"image id {image_id}.not_exhaustive_category_ids"
            raise CocoFormatError(file, where, expected(ids, "a list of category ids"))
        not_exhaustive[image_id] = set(ids)
    return names, not_exhaustive


class CocoTextQueries:
    """The ``text_coco`` queries (module docstring) of a COCO or LVIS dataset, one
    :class:`TextSample` per item of ``dataset``.

    Args:
        dataset: a :class:`~sam_lightning.data.coco.CocoDataset` or ``LvisDataset`` (made
            with ``skip_crowd=False`` for crowd regions to be in the ground truth).
        names: category id -> name (:func:`read_categories`).
        template: the query text, ``{}`` standing for the name.
        not_exhaustive: image id -> categories left out of its queries (LVIS).
    """

    def __init__(
        self,
        dataset: CocoDataset,
        names: Mapping[int, str],
        template: str = "{}",
        not_exhaustive: Mapping[int, set[int]] | None = None,
    ) -> None:
        self.dataset, self.names = dataset, names
        self.template = check_template(template)
        self.not_exhaustive = not_exhaustive or {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TextSample:
        from sam_lightning.ops import rle_decode

        item = self.dataset[index]
        image_id = item["image_info"]["image_id"]
        by_category: dict[int, list[int]] = {}
        for k, ann in enumerate(item["annotations"]):
            category = ann.get("category_id")
            if category not in self.names:
                raise CocoFormatError(
                    self.dataset.annotations,
                    f"annotation id {ann['id']}.category_id",
                    f"{category!r} is not in the file's categories",
                )
            by_category.setdefault(category, []).append(k)
        left_out = self.not_exhaustive.get(image_id, set())
        categories = sorted(c for c in by_category if c not in left_out)
        masks = rle_decode([ann["segmentation"] for ann in item["annotations"]]).bool()
        gt = masks.new_zeros((len(categories), *masks.shape[1:]))
        for q, category in enumerate(categories):
            gt[q] = masks[by_category[category]].any(0)
        return TextSample(
            image=item["image"],
            image_id=image_id,
            texts=[self.template.replace("{}", self.names[c]) for c in categories],
            gt_masks=gt,
            fields=[{"category_id": c} for c in categories],
            skipped={"not_exhaustive": len(by_category) - len(categories)},
        )

    def __iter__(self) -> Iterator[TextSample]:
        return (self[index] for index in range(len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset}, template {self.template!r})"


class RefCocoTextQueries:
    """The ``text_refcoco`` queries of a :class:`~sam_lightning.data.refcoco.RefCocoDataset`:
    per image, every sentence of every ref, with the ref's annotation mask."""

    def __init__(self, dataset: RefCocoDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TextSample:
        from sam_lightning.ops import rle_decode

        item = self.dataset[index]
        refs = item["refs"]
        masks = rle_decode([ref["segmentation"] for ref in refs]).bool()
        rows, texts, fields = [], [], []
        for k, ref in enumerate(refs):
            for j, sentence in enumerate(ref["sentences"]):
                rows.append(k)
                texts.append(sentence["sent"])
                fields.append(
                    {
                        "category_id": ref["category_id"],
                        "ref_id": ref["ref_id"],
                        "ann_id": ref["ann_id"],
                        "sent_id": sentence["sent_id"],
                        "sentence": j,
                    }
                )
        return TextSample(
            image=item["image"],
            image_id=item["image_info"]["image_id"],
            texts=texts,
            gt_masks=masks[rows],
            fields=fields,
        )

    def __iter__(self) -> Iterator[TextSample]:
        return (self[index] for index in range(len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset})"


def open_coco_queries(settings: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> CocoTextQueries:
    """The ``text_coco`` queries of ``data.format`` (``coco`` or ``lvis``),
    ``data.annotations`` and ``data.images`` with the ``eval`` settings."""
    from sam_lightning.data.coco import CocoDataset, LvisDataset

    kinds = {"coco": CocoDataset, "lvis": LvisDataset}
    kind = data_cfg.get("format", "coco")
    if kind not in kinds:
        raise ValueError(f"data.format must be one of {sorted(kinds)}, got {kind!r}")
    template = check_template(settings["prompt_template"])
    dataset = kinds[kind](
        data_cfg["annotations"], data_cfg["images"], skip_crowd=not settings["include_crowd"]
    )
    names, not_exhaustive = read_categories(dataset, lvis=kind == "lvis")
    return CocoTextQueries(
        dataset, names, template, not_exhaustive if settings["skip_not_exhaustive"] else None
    )


def open_refcoco_queries(data_cfg: Mapping[str, Any]) -> RefCocoTextQueries:
    """The ``text_refcoco`` queries of ``data.split`` of ``data.refs`` and
    ``data.instances``, by default ``<data.root>/<data.dataset>/refs(<data.split_by>).p`` and
    ``.../instances.json``, with the images of ``data.images`` (default
    ``<data.root>/images/mscoco/images/train2014``, the toolkit's layout)."""
    from sam_lightning.data.refcoco import RefCocoDataset, refer_paths

    root, refs, instances = data_cfg.get("root"), data_cfg.get("refs"), data_cfg.get("instances")
    images = data_cfg.get("images")
    if root is None and (refs is None or instances is None or images is None):
        raise ValueError(
            "text_refcoco: give data.root (the refer toolkit's data directory) or "
            "data.refs, data.instances and data.images"
        )
    if root is not None:
        default_refs, default_instances = refer_paths(
            root, data_cfg.get("dataset", "refcoco"), data_cfg.get("split_by")
        )
        refs, instances = refs or default_refs, instances or default_instances
        images = images or Path(root) / REFER_IMAGES
    dataset = RefCocoDataset(refs, instances, images, split=data_cfg.get("split"))
    return RefCocoTextQueries(dataset)
