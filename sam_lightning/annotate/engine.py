"""Image embeddings, cached, and prompt decoding against them.

The image encoder runs once per image: its embedding is kept in an in-memory LRU of
``memory`` images and, with a cache directory, in ``<dir>/<image name>.pt`` (``torch.save``
of the ``1 x C x h x w`` tensor, written atomically, loaded with ``weights_only=True``).
A disk entry older than its image is recomputed; ``<dir>/model.json`` records a fingerprint of
the weights that wrote the cache (:func:`weights_fingerprint`), and entries of other weights
are removed at start-up. A decode runs only
the prompt encoder and the mask decoder (:meth:`SamPredictor.predict` on the cached
embedding); its low-resolution logits are kept under a decode id so that the next decode can
feed them back (``previous``), as SAM's interactive loop does.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sam_lightning.file_io import write_atomic
from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling.fingerprint import encoder_fingerprint

if TYPE_CHECKING:
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.annotate")


@dataclass
class Embedding:
    """An image embedding with the sizes :class:`SamPredictor` needs to decode against it."""

    features: torch.Tensor  # 1 x C x h x w
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (H, W) after resizing to the encoder's input


@dataclass
class Decoded:
    """One decode: ``masks`` C x H x W bool, ``scores`` C predicted IoUs, both NumPy."""

    id: str
    masks: np.ndarray
    scores: np.ndarray
    latency_ms: float  # prompt encoder + mask decoder + upscaling, server side
    embed_seconds: float  # spent computing the embedding first (0 when cached)


class DecodeError(ValueError):
    """A decode request the engine cannot run (unknown ``previous``, bad prompts)."""


class AnnotationEngine:
    """Embeds images (cached) and decodes prompts with one :class:`SamPredictor`.

    Calls are serialised by a lock (one model, one predictor); they may come from any thread.

    Args:
        model: the SAM model (eval mode, on its device).
        cache_dir: directory of the on-disk embedding cache, or None for memory only.
        memory: embeddings kept in memory.
        history: decodes whose low-resolution logits are kept for ``previous``.
    """

    def __init__(
        self,
        model: Sam,
        cache_dir: str | os.PathLike[str] | None = None,
        memory: int = 8,
        history: int = 64,
    ) -> None:
        if memory < 1:
            raise ValueError(f"the embedding cache must hold at least 1 image, got {memory}")
        self.model = model
        self.predictor = SamPredictor(model)
        self.lock = threading.RLock()
        self.memory = memory
        self.history = history
        self._embeddings: OrderedDict[tuple[str, int], Embedding] = OrderedDict()  # (name, mtime)
        self._decodes: OrderedDict[str, tuple[str, np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self._check_cache_owner(weights_fingerprint(model))

    # --------------------------------------------------------------------------- embeddings

    def _check_cache_owner(self, key: dict[str, Any]) -> None:
        owner = self.cache_dir / "model.json"
        try:
            current = json.loads(owner.read_text())
        except (OSError, ValueError):
            current = None
        if current == key:
            return
        stale = list(self.cache_dir.glob("*.pt"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("embedding cache %s was written by another model: cleared", self.cache_dir)
        write_atomic(owner, json.dumps(key, sort_keys=True).encode())

    def _cache_file(self, name: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{name}.pt"

    def _sizes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        target = self.predictor.transform.target_length
        return (height, width), self.predictor.transform.get_preprocess_shape(height, width, target)

    def _from_disk(self, name: str, height: int, width: int, mtime_ns: int) -> Embedding | None:
        path = self._cache_file(name)
        if path is None or not path.is_file() or path.stat().st_mtime_ns < mtime_ns:
            return None
        try:
            features = torch.load(path, map_location=self.predictor.device, weights_only=True)
        except Exception as error:  # a corrupt or foreign file: recompute it
            log.warning("ignoring unreadable cached embedding %s: %s", path, error)
            return None
        prompt_encoder = self.model.prompt_encoder
        expected = (1, prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size)
        if not isinstance(features, torch.Tensor) or tuple(features.shape) != expected:
            log.warning("ignoring cached embedding %s: not a %s tensor", path, expected)
            return None
        return Embedding(features, *self._sizes(height, width))

    def embedding(
        self, name: str, load_image: Callable[[], np.ndarray], mtime_ns: int, size: tuple[int, int]
    ) -> tuple[Embedding, float, str]:
        """The embedding of image ``name`` (``size`` = (H, W)): from memory, from disk, or
        computed from ``load_image()``. Returns it, the seconds spent and where it came from
        (``"memory"``, ``"disk"`` or ``"computed"``)."""
        with self.lock:
            start = time.perf_counter()
            key = (name, mtime_ns)
            embedding = self._embeddings.get(key)
            where = "memory"
            if embedding is None:
                embedding, where = self._from_disk(name, *size, mtime_ns), "disk"
            if embedding is None:
                embedding, where = self._compute(name, load_image()), "computed"
            self._embeddings[key] = embedding
            self._embeddings.move_to_end(key)
            while len(self._embeddings) > self.memory:
                self._embeddings.popitem(last=False)
            seconds = time.perf_counter() - start
        if where == "computed":
            log.info("embedded %s in %.2f s", name, seconds)
        return embedding, seconds, where

    def _compute(self, name: str, image: np.ndarray) -> Embedding:
        self.predictor.set_image(image)
        features = self.predictor.get_image_embedding()
        embedding = Embedding(features, self.predictor.original_size, self.predictor.input_size)
        path = self._cache_file(name)
        if path is not None:
            buffer = io.BytesIO()
            torch.save(features.detach().cpu().clone(), buffer)
            write_atomic(path, buffer.getvalue())
        return embedding

    # ------------------------------------------------------------------------------- decode

    def decode(
        self,
        name: str,
        load_image: Callable[[], np.ndarray],
        mtime_ns: int,
        size: tuple[int, int],
        points: Sequence[Sequence[float]],
        box: Sequence[float] | None = None,
        previous: str | None = None,
        previous_candidate: int | None = None,
        multimask: bool = True,
    ) -> Decoded:
        """Masks for ``points`` (``[x, y, label]``) and/or ``box`` (XYXY) on image ``name``,
        fed the low-resolution logits of decode ``previous`` (its candidate
        ``previous_candidate``, by default its best-scored one) when given.

        Raises:
            DecodeError: no prompt, unknown ``previous`` or bad prompts.
        """
        if not points and box is None:
            raise DecodeError("give at least one point or a box")
        with self.lock:
            mask_input = None
            if previous is not None:
                mask_input = self._previous_logits(name, previous, previous_candidate)
            embedding, embed_seconds, _ = self.embedding(name, load_image, mtime_ns, size)
            start = time.perf_counter()
            self.predictor.set_features(
                embedding.features, [embedding.original_size], [embedding.input_size]
            )
            coords = np.array([p[:2] for p in points], dtype=np.float64) if points else None
            labels = np.array([p[2] for p in points], dtype=np.int64) if points else None
            try:
                masks, scores, low_res = self.predictor.predict(
                    coords,
                    labels,
                    None if box is None else np.array(box, dtype=np.float64),
                    mask_input,
                    multimask_output=multimask,
                )
            except ValueError as error:
                raise DecodeError(str(error)) from None
            latency_ms = (time.perf_counter() - start) * 1000
            decode_id = secrets.token_hex(6)
            self._decodes[decode_id] = (name, low_res, scores)
            while len(self._decodes) > self.history:
                self._decodes.popitem(last=False)
        log.info(
            "decode %s: %d point(s)%s, %d mask(s) in %.1f ms",
            name,
            len(points),
            " + box" if box is not None else "",
            len(scores),
            latency_ms,
        )
        return Decoded(decode_id, masks, scores, latency_ms, embed_seconds)

    def _previous_logits(self, name: str, previous: str, candidate: int | None) -> np.ndarray:
        entry = self._decodes.get(previous)
        if entry is None:
            raise DecodeError(
                f"unknown previous decode {previous!r} (only the last {self.history} are kept)"
            )
        image, low_res, scores = entry
        if image != name:
            raise DecodeError(f"previous decode {previous!r} belongs to image {image!r}")
        if candidate is None:
            candidate = int(np.argmax(scores))
        if not 0 <= candidate < len(low_res):
            raise DecodeError(
                f"previous_candidate {candidate} out of range: decode {previous!r} has "
                f"{len(low_res)} mask(s)"
            )
        return low_res[[candidate]]

    def run_exclusive(self, function: Callable[[], Any]) -> Any:
        """Runs ``function`` holding the engine's lock (the model is shared)."""
        with self.lock:
            return function()


def weights_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Identifies the weights behind the cached embeddings: the encoder's input size and
    :func:`~sam_lightning.modeling.fingerprint.encoder_fingerprint` of the image encoder and
    the pixel normalisation (a decoder-only change keeps the cache)."""
    encoder = model.image_encoder
    extra = {"pixel_mean": model.pixel_mean, "pixel_std": model.pixel_std}
    return {"image_size": int(encoder.img_size), "sha256": encoder_fingerprint(encoder, extra)}
