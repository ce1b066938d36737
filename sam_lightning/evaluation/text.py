"""Text-to-mask (SAM paper App. D.5), the ``+eval=text_coco`` / ``text_refcoco`` command:
free-form text prompts through CLIP's text encoder.

The model (built with a text projection, ``text_embed_dim`` = the CLIP embedding width) is
prompted with a text alone (:func:`text_predictor` pairs it with the CLIP encoder). The
task's queries come from :mod:`sam_lightning.evaluation.text_queries` (COCO/LVIS category
names or RefCOCO sentences), are run by :mod:`sam_lightning.evaluation.text_harness` and
scored by :mod:`sam_lightning.evaluation.text_metrics` (``giou``, ``ciou``, by size, and
for ``text_coco`` ``giou_category_mean``). :func:`run_from_config` reads the ``eval``
settings (:mod:`sam_lightning.settings.evaluate`), writes the records to
``predictions.json`` (the COCO results format, one record per query; see
:mod:`~sam_lightning.evaluation.text_harness`) and returns the metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.evaluation.text_harness import evaluate_text
from sam_lightning.evaluation.text_queries import open_coco_queries, open_refcoco_queries

if TYPE_CHECKING:
    from sam_lightning.evaluation.text_queries import CocoTextQueries, RefCocoTextQueries
    from sam_lightning.inference.predictor import SamPredictor
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.evaluation.text")

PREDICTIONS_FILE = "predictions.json"


def _clip_path(task: str, settings: Mapping[str, Any]) -> str:
    clip = settings["clip"]
    if not isinstance(clip, Mapping) or set(clip) != {"path"} or not clip["path"]:
        raise ValueError(f"{task}: eval.clip must be {{path: <CLIP directory>}}, got {clip!r}")
    return str(clip["path"])


def text_predictor(get_model: Callable[[], Sam], clip_path: str, device: str) -> SamPredictor:
    """A :class:`~sam_lightning.inference.predictor.SamPredictor` of ``get_model()`` with
    the CLIP text encoder of ``clip_path`` (loaded first: a bad path fails before a large
    model is built) on ``device``. Raises ValueError if the model's text projection does not
    take that encoder's embeddings, or was not in its checkpoint (freshly initialised)."""
    from sam_lightning.inference.predictor import SamPredictor
    from sam_lightning.modeling.build import TEXT_PROJECTION
    from sam_lightning.modeling.text_encoder import ClipEncoder

    clip = ClipEncoder.from_pretrained(clip_path).to(device)
    model = get_model()
    if any(key.startswith(TEXT_PROJECTION) for key in model.missing_from_checkpoint):
        raise ValueError(
            f"the checkpoint has no text projection ({TEXT_PROJECTION}*): the text tasks need "
            "a model trained with text prompts (training.text); the official and MobileSAM "
            "(vit_t) checkpoints have none"
        )
    width = model.prompt_encoder.text_embed_dim
    if width != clip.embed_dim:
        have = "no text prompt" if width is None else f"a text projection of width {width}"
        raise ValueError(
            f"the model has {have}, but the CLIP encoder of {clip_path} gives "
            f"{clip.embed_dim}-wide embeddings: set model.text_embed_dim={clip.embed_dim}"
        )
    return SamPredictor(model, text_encoder=clip)


def run_from_config(job: EvalJob) -> dict[str, float] | None:
    """``+eval=text_coco`` / ``text_refcoco``: runs :func:`evaluate_text` on the task's
    queries with the ``eval`` settings (:mod:`sam_lightning.settings.evaluate`), writes
    ``<output_dir>/predictions.json`` and returns the metrics. ``device`` is where
    ``get_model`` puts the model (and where the text encoder goes)."""
    from sam_lightning.file_io import write_atomic

    task = job.eval.get("task", "text_coco")
    if task not in ("text_coco", "text_refcoco"):
        raise ValueError(f"text harness: unknown task {task!r}; text_coco or text_refcoco")
    settings = job.settings(task)
    clip_path = _clip_path(task, settings)
    # the data first: bad paths fail before a large model is built
    if task == "text_coco":
        queries: CocoTextQueries | RefCocoTextQueries = open_coco_queries(settings, job.data)
    else:
        queries = open_refcoco_queries(job.data)
    log.info("%s: %s on %s", task, queries, job.device)
    result = evaluate_text(
        text_predictor(job.get_model, clip_path, job.device),
        queries,
        queries_per_batch=int(settings["queries_per_batch"]),
        max_images=settings["max_images"],
        per_category=task == "text_coco",
        map_items=job.map_items(settings),
    )
    if result is None:  # not rank 0
        return None
    metrics, records = result
    target = write_atomic(Path(job.output_dir) / PREDICTIONS_FILE, json.dumps(records).encode())
    log.info("%d query predictions in %s", len(records), target)
    return metrics
