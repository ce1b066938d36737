"""The annotation tool without its web layer: what every API call does, as plain methods.

:class:`AnnotationTool` joins the image folder, the annotation files, the embedding engine
and (``mode="semi"``) the confident-mask source. Methods take and return JSON-ready values,
raise :class:`~sam_lightning.annotate.store.ApiError` for requests they refuse, and may be
called from any thread.
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sam_lightning import ops
from sam_lightning.annotate import stats as stats_module
from sam_lightning.annotate.engine import AnnotationEngine, DecodeError
from sam_lightning.annotate.request_values import parse_box, parse_mask, parse_points
from sam_lightning.annotate.semi import MaskSource, model_records
from sam_lightning.annotate.store import (
    SOURCES,
    AnnotationStore,
    ApiError,
    ImageEntry,
    ImageFolder,
)

if TYPE_CHECKING:
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.annotate")

MODES = ("manual", "semi")
EMBEDDINGS_DIR = ".embeddings"


def new_session_id() -> str:
    """A session id from the local start time, e.g. ``2025-01-31T14-05-09``."""
    return datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


class AnnotationTool:
    """One annotation session over ``images``, writing to ``output``.

    Args:
        images: the folder of images.
        output: where the annotation files (and ``.embeddings/``) go.
        model: the SAM model.
        mode: ``"manual"`` (stage 1) or ``"semi"`` (stage 2: needs ``mask_source``).
        annotator, session: recorded with every mask (session: default the start time).
        memory_cache: embeddings kept in memory.
        disk_cache: also keep embeddings in ``<output>/.embeddings/``.
        mask_source: confident masks for ``mode="semi"``.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        output: str | os.PathLike[str],
        model: Sam,
        mode: str = "manual",
        annotator: str = "annotator",
        session: str | None = None,
        memory_cache: int = 8,
        disk_cache: bool = True,
        mask_source: MaskSource | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "semi" and mask_source is None:
            raise ValueError("mode=semi needs a mask_source (confident masks)")
        if not annotator:
            raise ValueError("annotator must be a non-empty name")
        self.folder = ImageFolder(images)
        output = Path(output)
        if output.resolve() == self.folder.root.resolve():
            raise ValueError("output must differ from the images folder")
        self.store = AnnotationStore(output, self.folder)
        cache_dir = output / EMBEDDINGS_DIR if disk_cache else None
        self.engine = AnnotationEngine(model, cache_dir, memory_cache)
        self.mode, self.annotator = mode, annotator
        self.session = session or new_session_id()
        self.mask_source = mask_source

    # ------------------------------------------------------------------------------ images

    def info(self) -> dict[str, Any]:
        """What the page needs to know about the session."""
        return {
            "mode": self.mode,
            "annotator": self.annotator,
            "session": self.session,
            "images": len(self.folder.entries),
        }

    def list_images(self) -> list[dict[str, Any]]:
        """Every image: name, width, height, masks (saved), done."""
        rows = []
        for entry in self.folder.scan():
            masks, done = 0, False
            if self.store.exists(entry):
                try:
                    document = self.store.load(entry)
                    masks, done = len(document["annotations"]), document["annotate"]["done"]
                except ApiError as error:
                    log.error("%s", error.message)
            rows.append(
                {
                    "name": entry.name,
                    "width": entry.width,
                    "height": entry.height,
                    "masks": masks,
                    "done": done,
                }
            )
        return rows

    def entry(self, name: str) -> ImageEntry:
        """The image ``name``; ApiError 404 if the folder has none."""
        return self.folder.get(name)

    def pixels(self, name: str) -> tuple[bytes, str]:
        """The image file for the browser (see ``ImageFolder.web_image``)."""
        return self.folder.web_image(self.entry(name))

    # ---------------------------------------------------------------------- model work

    def _embedding(self, entry: ImageEntry) -> tuple[float, str]:
        _, seconds, where = self.engine.embedding(
            entry.name, lambda: self.folder.read(entry), entry.mtime_ns, (entry.height, entry.width)
        )
        return seconds, where

    def prepare(self, name: str) -> dict[str, Any]:
        """Readies image ``name``: in semi mode pre-fills it (once), then embeds it.
        Returns ``{"seconds", "cached", "prefilled"}`` (``cached``: memory/disk/computed)."""
        entry = self.entry(name)
        prefilled = self.prefill(entry) if self.mode == "semi" else 0
        seconds, where = self._embedding(entry)
        return {"seconds": round(seconds, 4), "cached": where, "prefilled": prefilled}

    def prefill(self, entry: ImageEntry) -> int:
        """Saves the confident masks of an image that has no annotation file yet; returns
        how many (0 if it already had a file)."""
        if self.store.exists(entry):
            return 0
        image = self.folder.read(entry)
        start = time.perf_counter()
        records = self.engine.run_exclusive(lambda: self.mask_source(image, entry))
        seconds = time.perf_counter() - start
        prefill = {
            "source": self.mask_source.name,
            "session": self.session,
            "annotator": self.annotator,
            "masks": len(records),
            "seconds": round(seconds, 3),
        }
        added = self.store.create(
            entry,
            model_records(records),
            annotator=self.annotator,
            session=self.session,
            prefill=prefill,
        )
        if added is None:  # annotated meanwhile
            return 0
        log.info("semi: %s pre-filled with %d masks in %.2f s", entry.name, len(added), seconds)
        return len(added)

    def decode(self, name: str, body: Any) -> dict[str, Any]:
        """``{points, box, previous, previous_candidate, multimask}`` → ``{id, candidates:
        [{mask: COCO RLE, score, area}], latency_ms, embed_seconds}``."""
        entry = self.entry(name)
        body = _object(body)
        _allowed(body, {"points", "box", "previous", "previous_candidate", "multimask"})
        points = parse_points(body.get("points"), entry.width, entry.height)
        box = parse_box(body.get("box"), entry.width, entry.height)
        previous = body.get("previous")
        if previous is not None and not isinstance(previous, str):
            raise ApiError(400, "previous must be the id of an earlier decode or null")
        candidate = body.get("previous_candidate")
        if candidate is not None and not _is_int(candidate):
            raise ApiError(400, "previous_candidate must be an int or null")
        if candidate is not None and previous is None:
            raise ApiError(
                400,
                "previous_candidate was given without previous: it picks a candidate of the "
                "earlier decode named by previous (its id)",
            )
        multimask = body.get("multimask", True)
        if not isinstance(multimask, bool):
            raise ApiError(400, "multimask must be true or false")
        try:
            decoded = self.engine.decode(
                entry.name,
                lambda: self.folder.read(entry),
                entry.mtime_ns,
                (entry.height, entry.width),
                points,
                box,
                previous,
                candidate,
                multimask,
            )
        except DecodeError as error:
            raise ApiError(400, str(error)) from None
        rles = ops.rle_encode(decoded.masks)
        areas = ops.rle_area(rles).tolist()
        candidates = [
            {
                "mask": {"size": r["size"], "counts": r["counts"].decode("ascii")},
                "score": s,
                "area": a,
            }
            for r, s, a in zip(rles, decoded.scores.tolist(), areas)
        ]
        return {
            "id": decoded.id,
            "candidates": candidates,
            "latency_ms": round(decoded.latency_ms, 2),
            "embed_seconds": round(decoded.embed_seconds, 4),
        }

    # ------------------------------------------------------------------------------ masks

    def masks(self, name: str) -> dict[str, Any]:
        """The saved masks of image ``name`` and whether it is done."""
        entry = self.entry(name)
        document = self.store.load(entry)
        return {
            "image": document["image"],
            "annotations": document["annotations"],
            "done": document["annotate"]["done"],
        }

    def save_mask(self, name: str, body: Any) -> dict[str, Any]:
        """``{mask: COCO RLE, prompts: {points, box}, seconds, source, candidate, score,
        refined}`` → the saved annotation."""
        entry = self.entry(name)
        body = _object(body)
        _allowed(body, {"mask", "prompts", "seconds", "source", "candidate", "score", "refined"})
        if "mask" not in body:
            raise ApiError(400, "mask is missing")
        segmentation = parse_mask(body["mask"], entry.width, entry.height)
        prompts = body.get("prompts") or {}
        if not isinstance(prompts, dict):
            raise ApiError(400, "prompts must be {points: [[x, y, label]], box: [...] | null}")
        _allowed(prompts, {"points", "box"}, "prompts")
        prompts = {
            "points": parse_points(prompts.get("points"), entry.width, entry.height),
            "box": parse_box(prompts.get("box"), entry.width, entry.height),
        }
        seconds = body.get("seconds")
        if seconds is not None and not (_is_number(seconds) and 0 <= seconds < 1e7):
            raise ApiError(400, "seconds must be a number >= 0 (time spent on the mask) or null")
        source = body.get("source", "person")
        if source not in SOURCES:
            raise ApiError(400, f"source must be one of {list(SOURCES)}, got {source!r}")
        candidate, score = body.get("candidate"), body.get("score")
        if candidate is not None and not _is_int(candidate):
            raise ApiError(400, "candidate must be an int or null")
        if score is not None and not _is_number(score):
            raise ApiError(400, "score must be a finite number or null")
        refined = body.get("refined", False)
        if not isinstance(refined, bool):
            raise ApiError(400, "refined must be true or false")
        record = {
            "segmentation": segmentation,
            "source": source,
            "prompts": prompts,
            "seconds": None if seconds is None else round(float(seconds), 3),
            "candidate": candidate,
            "score": score,
            "refined": refined,
        }
        (saved,) = self.store.add(entry, [record], annotator=self.annotator, session=self.session)
        log.info("saved mask %d of %s (%s, %s s)", saved["id"], name, source, record["seconds"])
        return saved

    def delete_mask(self, name: str, ann_id: str) -> dict[str, Any]:
        """Deletes mask ``ann_id`` of image ``name``; returns it."""
        entry = self.entry(name)
        try:
            number = int(ann_id)
        except ValueError:
            shown = (
                repr(ann_id)
                if len(ann_id) <= 60
                else f"{ann_id[:60]!r}... ({len(ann_id)} characters)"
            )
            raise ApiError(400, f"mask id must be an integer, got {shown}") from None
        removed = self.store.delete(entry, number)
        log.info("deleted mask %d of %s (%s)", number, name, removed.get("source"))
        return {"deleted": number}

    def set_done(self, name: str, body: Any) -> dict[str, Any]:
        """``{done: bool}`` marks image ``name`` done or not."""
        entry = self.entry(name)
        body = _object(body)
        if not isinstance(body.get("done"), bool):
            raise ApiError(400, "done must be true or false")
        self.store.set_done(entry, body["done"])
        return {"name": name, "done": body["done"]}

    def stats(self) -> dict[str, Any]:
        """Statistics of the output folder (see :mod:`sam_lightning.annotate.stats`) and of
        this session."""
        result = stats_module.annotation_stats(self.store.output)
        result["current"] = {"annotator": self.annotator, "session": self.session}
        return result

    # --------------------------------------------------------------------------- precompute

    def precompute(self, progress: bool = True) -> dict[str, int]:
        """Embeds every image into the disk cache (and pre-fills it in semi mode), with a
        progress bar; returns counts."""
        if self.engine.cache_dir is None:
            raise ValueError("precompute needs the disk cache (cache.disk=true)")
        counts = {"images": 0, "computed": 0, "cached": 0, "prefilled": 0, "failed": 0}
        entries = self.folder.scan()
        with logging_redirect_tqdm():
            for entry in tqdm(entries, desc="embed", unit="img", disable=not progress):
                counts["images"] += 1
                try:
                    if self.mode == "semi":
                        counts["prefilled"] += self.prefill(entry)
                    _, where = self._embedding(entry)
                except (OSError, ValueError, ApiError) as error:
                    log.error("skipping %s: %s", entry.name, getattr(error, "message", error))
                    counts["failed"] += 1
                    continue
                counts["computed" if where == "computed" else "cached"] += 1
        return counts


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if not (_is_int(value) or isinstance(value, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _allowed(body: dict[str, Any], keys: set[str], where: str = "the request") -> None:
    unknown = sorted(set(body) - keys)
    if unknown:
        raise ApiError(400, f"{where} has unknown fields {unknown}; allowed: {sorted(keys)}")
