"""Text-to-mask (SAM paper App. D.5): free-form text prompts through CLIP's text encoder.

The model (built with a text projection, ``text_embed_dim`` = the CLIP embedding width) is
prompted with a text alone; of its 3 masks (multimask output) the most confident one
(highest predicted IoU) is the prediction, measured against the query's ground truth at the
image's original resolution. Two query sources:

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

A query whose ground truth is empty is left out and counted (``num_skipped_empty``), so that
an IoU is always defined. Work per image: the encoder runs once; the texts are decoded
together in batches of ``queries_per_batch``.

Metrics (:func:`text_metrics`): ``giou`` (mean of the per-query IoUs: the "mIoU" / "gIoU" of
the referring-segmentation literature), ``ciou`` (cumulative IoU: the sum of intersections
over the sum of unions), both also ``_small``/``_medium``/``_large`` by the ground truth's
pixel count (COCO's area ranges, :data:`~sam_lightning.evaluation.points.AREA_RANGES`), and
for ``text_coco`` ``giou_category_mean`` (the mean over categories of their gIoU,
:func:`category_giou`).

Outputs: ``predictions.json`` in the COCO results format, one record per query:
``image_id``, ``category_id``, for RefCOCO ``ref_id``, ``ann_id``, ``sent_id`` (the
sentence's id, null if the file has none) and ``sentence`` (its position in the ref), the
prediction as a compressed RLE ``segmentation``, ``score`` (its predicted IoU), ``text``
(as given to CLIP), ``iou``, ``intersection``, ``union`` and ``gt_area`` (pixels).
:func:`text_metrics` computes the metrics from these records alone.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sam_lightning.data.sa1b import SA1BFormatError, _bad, _is_int
from sam_lightning.evaluation.points import size_groups
from sam_lightning.evaluation.settings import task_settings

if TYPE_CHECKING:
    from sam_lightning.data.coco import CocoDataset
    from sam_lightning.data.refcoco import RefCocoDataset
    from sam_lightning.inference.predictor import SamPredictor
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.evaluation.text")

PREDICTIONS_FILE = "predictions.json"
#: The refer toolkit's image directory under its data root (COCO train2014).
REFER_IMAGES = Path("images", "mscoco", "images", "train2014")
_COMMON: dict[str, Any] = {"clip": {"path": None}, "queries_per_batch": 64, "max_images": None}
#: ``eval`` settings and their defaults per task (see conf/eval/text_*.yaml).
DEFAULTS: dict[str, dict[str, Any]] = {
    "text_coco": {
        **_COMMON,
        "prompt_template": "{}",
        "include_crowd": True,
        "skip_not_exhaustive": True,
    },
    "text_refcoco": dict(_COMMON),
}


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


# ---------------------------------------------------------------------------- sources


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
    (``traffic_light``: "traffic light"). Raises SA1BFormatError for missing or malformed
    ``categories`` (an int ``id`` and a non-empty str ``name`` each) or
    ``not_exhaustive_category_ids`` (a list of ints)."""
    file = str(dataset.annotations)
    categories = dataset.categories
    if not isinstance(categories, list):
        problem = "missing" if categories is None else _bad(categories, "a list")
        raise SA1BFormatError(file, "categories", f"{problem}; text queries need the names")
    names = {}
    for k, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise SA1BFormatError(file, f"categories[{k}].id", _bad(category, "an int id"))
        name = category.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SA1BFormatError(file, f"categories[{k}].name", _bad(name, "a name"))
        names[category["id"]] = name.replace("_", " ") if lvis else name
    not_exhaustive = {}
    for image_id, ids in dataset.not_exhaustive_category_ids.items():
        if not (isinstance(ids, list) and all(_is_int(c) for c in ids)):
            where = f"image id {image_id}.not_exhaustive_category_ids"
            raise SA1BFormatError(file, where, _bad(ids, "a list of category ids"))
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
                raise SA1BFormatError(
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


# ----------------------------------------------------------------------------- harness


@torch.inference_mode()
def segment_texts(
    predictor: SamPredictor, texts: Sequence[str], queries_per_batch: int = 64
) -> tuple[Tensor, Tensor]:
    """The most confident of the 3 masks of each text prompt alone on the image set in
    ``predictor`` (a text-enabled :class:`~sam_lightning.inference.predictor.SamPredictor`):
    ``Q×H×W`` bool masks and their ``Q`` predicted IoUs."""
    masks, scores = [], []
    for start in range(0, len(texts), queries_per_batch):
        batch = list(texts[start : start + queries_per_batch])
        three, three_scores, _ = predictor.predict_torch(
            None, None, text=batch, multimask_output=True
        )
        best = three_scores.argmax(1)
        rows = torch.arange(len(batch), device=best.device)
        masks.append(three[rows, best].bool())
        scores.append(three_scores[rows, best].float())
    return torch.cat(masks), torch.cat(scores)


def _records(
    sample: TextSample, keep: Tensor, masks: Tensor, scores: Tensor
) -> list[dict[str, Any]]:
    """The ``predictions.json`` records (module docstring) of the kept queries of a sample."""
    from sam_lightning.ops import rle_encode

    gt = sample.gt_masks[keep].to(masks.device)
    intersection = (masks & gt).flatten(1).sum(1).tolist()
    union = (masks | gt).flatten(1).sum(1).tolist()
    gt_area = gt.flatten(1).sum(1).tolist()
    rles = rle_encode(masks.cpu())
    records = []
    for k, q in enumerate(torch.nonzero(keep)[:, 0].tolist()):
        counts = rles[k]["counts"]
        records.append(
            {
                "image_id": sample.image_id,
                **sample.fields[q],
                "segmentation": {
                    "size": rles[k]["size"],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                },
                "score": scores[k].item(),
                "text": sample.texts[q],
                "iou": intersection[k] / union[k],
                "intersection": intersection[k],
                "union": union[k],
                "gt_area": gt_area[k],
            }
        )
    return records


def _evaluate_sample(
    predictor: SamPredictor, sample: TextSample, queries_per_batch: int
) -> tuple[list[dict[str, Any]], int]:
    """The records of one sample's queries, and how many were left out as empty."""
    if len(sample.gt_masks) != len(sample.texts) or len(sample.fields) != len(sample.texts):
        raise ValueError(
            f"image {sample.image_id}: {len(sample.texts)} texts, {len(sample.gt_masks)} "
            f"ground-truth masks and {len(sample.fields)} record fields"
        )
    keep = sample.gt_masks.flatten(1).any(1)
    records: list[dict[str, Any]] = []
    if keep.any():
        predictor.set_image(sample.image)
        if tuple(sample.gt_masks.shape[1:]) != tuple(predictor.original_size):
            raise ValueError(
                f"image {sample.image_id}: ground truth is {tuple(sample.gt_masks.shape[1:])}, "
                f"the image {tuple(predictor.original_size)}"
            )
        texts = [text for text, kept in zip(sample.texts, keep.tolist()) if kept]
        masks, scores = segment_texts(predictor, texts, queries_per_batch)
        records = _records(sample, keep, masks, scores)
    return records, len(keep) - len(records)


def evaluate_text(
    predictor: SamPredictor,
    samples: Iterable[TextSample],
    queries_per_batch: int = 64,
    max_images: int | None = None,
    progress: bool = True,
    per_category: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluates a text-enabled ``predictor`` on every query of ``samples`` (an iterable of
    :class:`TextSample`, e.g. :class:`CocoTextQueries` or :class:`RefCocoTextQueries`; the
    first ``max_images`` if given); returns :func:`text_metrics` (``per_category`` as
    there), ``num_images``, ``num_skipped_empty`` (queries with an empty ground truth, left
    out) and ``num_skipped_<reason>`` (left out by the source), and the
    ``predictions.json`` records."""
    if queries_per_batch < 1:
        raise ValueError(f"queries_per_batch must be at least 1, got {queries_per_batch}")
    total = len(samples) if hasattr(samples, "__len__") else None
    if max_images is not None:
        total = int(max_images) if total is None else min(int(max_images), total)
    records: list[dict[str, Any]] = []
    skipped: dict[str, int] = {"empty": 0}
    count, iou_sum = 0, 0.0
    bar = tqdm(
        itertools.islice(samples, max_images), "text", total, unit="img", disable=not progress
    )
    with logging_redirect_tqdm(), bar:
        for sample in bar:
            image_records, empty = _evaluate_sample(predictor, sample, queries_per_batch)
            records += image_records
            count += 1
            skipped["empty"] += empty
            for reason, number in sample.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + number
            iou_sum += sum(r["iou"] for r in image_records)
            if records:
                bar.set_postfix(queries=len(records), giou=f"{iou_sum / len(records):.3f}")
    predictor.reset_image()
    metrics = text_metrics(records, per_category=per_category)
    metrics["num_images"] = float(count)
    metrics.update((f"num_skipped_{reason}", float(n)) for reason, n in skipped.items())
    return metrics, records


# ----------------------------------------------------------------------------- metrics


def category_giou(records: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """Per ``category_id`` of the records, the mean IoU of its queries."""
    ious: dict[int, list[float]] = {}
    for record in records:
        ious.setdefault(record["category_id"], []).append(record["iou"])
    return {category: float(np.mean(values)) for category, values in sorted(ious.items())}


def text_metrics(
    records: Iterable[Mapping[str, Any]], per_category: bool = False
) -> dict[str, float]:
    """Flat metrics from ``predictions.json`` records: ``giou`` (mean of the records'
    ``iou``), ``ciou`` (sum of ``intersection`` over sum of ``union``), the same with a
    ``_small``/``_medium``/``_large`` suffix for each size (by ``gt_area``; sizes without
    queries are left out) and ``num_queries[_<size>]``; with ``per_category`` also
    ``giou_category_mean`` (the mean of :func:`category_giou`) and ``num_categories``."""
    records = list(records)
    metrics: dict[str, float] = {}
    for suffix, group in size_groups(records).items():
        metrics[f"num_queries{suffix}"] = float(len(group))
        if not group:
            continue
        metrics[f"giou{suffix}"] = float(np.mean([r["iou"] for r in group]))
        intersection = sum(int(r["intersection"]) for r in group)
        metrics[f"ciou{suffix}"] = intersection / sum(int(r["union"]) for r in group)
    if per_category:
        by_category = category_giou(records)
        metrics["num_categories"] = float(len(by_category))
        if by_category:
            metrics["giou_category_mean"] = float(np.mean(list(by_category.values())))
    return metrics


# -------------------------------------------------------------------------- the command


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


def _clip_path(task: str, settings: Mapping[str, Any]) -> str:
    clip = settings["clip"]
    if not isinstance(clip, Mapping) or set(clip) != {"path"} or not clip["path"]:
        raise ValueError(f"{task}: eval.clip must be {{path: <CLIP directory>}}, got {clip!r}")
    return str(clip["path"])


def text_predictor(get_model: Callable[[], Sam], clip_path: str, device: str) -> SamPredictor:
    """A :class:`~sam_lightning.inference.predictor.SamPredictor` of ``get_model()`` with
    the CLIP text encoder of ``clip_path`` (loaded first: a bad path fails before a large
    model is built) on ``device``. Raises ValueError if the model's text projection does not
    take that encoder's embeddings."""
    from sam_lightning.inference.predictor import SamPredictor
    from sam_lightning.modeling.text_encoder import ClipEncoder

    clip = ClipEncoder.from_pretrained(clip_path).to(device)
    model = get_model()
    width = model.prompt_encoder.text_embed_dim
    if width != clip.embed_dim:
        have = "no text prompt" if width is None else f"a text projection of width {width}"
        raise ValueError(
            f"the model has {have}, but the CLIP encoder of {clip_path} gives "
            f"{clip.embed_dim}-wide embeddings: set model.text_embed_dim={clip.embed_dim}"
        )
    return SamPredictor(model, text_encoder=clip)


def run_from_config(
    get_model: Callable[[], Sam],
    eval_cfg: Mapping[str, Any],
    data_cfg: Mapping[str, Any],
    output_dir: Path,
    device: str,
    progress: bool = True,
) -> dict[str, float]:
    """``+eval=text_coco`` / ``text_refcoco``: runs :func:`evaluate_text` on the task's
    queries with the ``eval`` settings (:data:`DEFAULTS`), writes
    ``<output_dir>/predictions.json`` and returns the metrics. ``device`` is where
    ``get_model`` puts the model (and where the text encoder goes)."""
    from sam_lightning.data.sa1b import write_atomic

    task = eval_cfg.get("task", "text_coco")
    if task not in DEFAULTS:
        raise ValueError(f"text harness: unknown task {task!r}; one of {sorted(DEFAULTS)}")
    settings = task_settings(task, eval_cfg, DEFAULTS[task])
    clip_path = _clip_path(task, settings)
    # the data first: bad paths fail before a large model is built
    if task == "text_coco":
        queries: CocoTextQueries | RefCocoTextQueries = open_coco_queries(settings, data_cfg)
    else:
        queries = open_refcoco_queries(data_cfg)
    log.info("%s: %s on %s", task, queries, device)
    metrics, records = evaluate_text(
        text_predictor(get_model, clip_path, device),
        queries,
        queries_per_batch=int(settings["queries_per_batch"]),
        max_images=settings["max_images"],
        progress=progress,
        per_category=task == "text_coco",
    )
    target = write_atomic(Path(output_dir) / PREDICTIONS_FILE, json.dumps(records).encode())
    log.info("%d query predictions in %s", len(records), target)
    return metrics
