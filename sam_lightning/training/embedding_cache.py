"""A disk cache of image embeddings, for training with a frozen image encoder.

When the image encoder is frozen and nothing changes a training image from epoch to epoch
(no large-scale jitter, no LoRA adapters on the encoder, no drop path), each image's
embedding is the same at every epoch: :meth:`EmbeddingCache.embed` computes it once, stores
it and later reads it from disk instead of running the encoder. :func:`cache_problems` says
why a configuration cannot use the cache.

Layout: ``<root>/manifest.json`` ({``format``, ``fingerprint``, ``dtype``, ``description``})
and one safetensors file per image, ``<root>/<key[:2]>/<key>.safetensors``, holding the
``C×h×w`` embedding in the cache dtype and the metadata {``format``, ``fingerprint``,
``key``, ``crc32``} (``crc32`` of the tensor's bytes, to detect corrupted data).

Key: :func:`image_key`, the sha256 of the image as the model sees it, i.e. the uint8 pixels
of the unpadded part ``image[:, :h, :w]``, with ``h``, ``w``, the padded side ``S`` and the
dtype. The key thus covers the image and its transform (resize, crop, padding). The padding's
content is not part of it: the encoder never sees it (the model normalises the unpadded part
and pads it with zeros itself, see ``Sam.encode_images``).

Staleness: :func:`~sam_lightning.modeling.fingerprint.encoder_fingerprint` is the sha256 of
the encoder's whole state dict (parameters and buffers, and optional ``extra`` values such
as the pixel mean and std or the precision). Opening a cache whose manifest has another
format, fingerprint or dtype raises :class:`StaleCacheError`; so does reading an entry whose
metadata names another format, fingerprint or key, or whose tensor has another dtype. A
stale embedding is never used silently. An entry that cannot be read (truncated, garbage, a
wrong checksum) is a miss: a :class:`CorruptEntryWarning` names the file, and the embedding
is recomputed and overwritten.

Atomicity: entries are written with :func:`sam_lightning.file_io.atomic_path` (a temporary
file in the same folder, fsynced, then ``os.replace``), so readers see a whole entry or none
and several processes (DDP ranks, concurrent runs) can fill the same directory at once; an
image computed twice is just written twice with the same content. The manifest is written to
a temporary file and hard-linked into place (create-if-absent), so the first of several
processes opening a new directory wins and every process then reads and compares the same
manifest. Temporary files of killed writers are never read as entries (they can be removed
with :func:`sam_lightning.file_io.remove_temp_files` while no one writes). Entries persist:
a later or restarted run computes only the missing ones.

Precision: ``float16`` and ``bfloat16`` caches halve the disk space and the bytes read per
step, at the cost of rounding each value to that precision (relative error at most 2^-11
for float16, 2^-8 for bfloat16); :meth:`EmbeddingCache.embed` returns the rounded values
for misses too, so every epoch sees the same embeddings. A ``float32`` cache returns exactly
what the encoder computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from sam_lightning.file_io import atomic_path, write_if_absent
from sam_lightning.modeling.fingerprint import encoder_fingerprint, tensor_bytes

#: Version of the manifest and entry layout; another version makes a cache stale.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Dtypes a cache may store embeddings in, by their manifest name.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_TENSOR = "embedding"
_STALE_HINT = "delete the directory or choose another training.embedding_cache directory"
_MANIFEST_READ_TRIES = 5  # a manifest being written without hard links may be seen partial


class StaleCacheError(ValueError):
    """A cache directory or entry made for another encoder, dtype or format.

    Attributes:
        path: the directory or entry file.
        field: what differs (``fingerprint``, ``dtype``, ``format``, ``key``).
        cached: the value found on disk.
        current: the value of the current run.
    """

    def __init__(self, path: str | os.PathLike[str], field: str, cached: Any, current: Any):
        self.path, self.field, self.cached, self.current = str(path), field, cached, current
        what = "embedding cache entry" if Path(path).suffix == ".safetensors" else "embedding cache"
        super().__init__(
            f"{what} {path} is stale: its {field} is {cached!r}, the current {field} is "
            f"{current!r}; {_STALE_HINT}"
        )


class CorruptEntryWarning(RuntimeWarning):
    """A cache entry that cannot be read; it is recomputed and overwritten."""


# ---------------------------------------------------------------------------- fingerprint


def image_key(image: Tensor, input_size: Sequence[int] | Tensor) -> str:
    """The sha256 (hex) of an image as the model sees it: the uint8 pixels of its unpadded
    part ``image[:, :h, :w]``, with ``h``, ``w``, the padded side ``S`` and the dtype. The
    padding's content is ignored (the model pads the unpadded part itself).

    Args:
        image: ``3×S×S`` uint8, the image at the top left (as in a batch of
            :func:`~sam_lightning.data.samples.collate`).
        input_size: ``(h, w)`` of the unpadded part, ``1 <= h, w <= S``.

    Raises:
        ValueError: a tensor of another dtype or shape, or an invalid ``input_size``.
    """
    _check_image(image, "image")
    side = image.shape[-1]
    h, w = _check_input_size(input_size, side)
    crop = image[:, :h, :w].detach().cpu().contiguous()
    header = f"sam_lightning.embedding_cache.image.v{FORMAT_VERSION} uint8 S={side} h={h} w={w}\n"
    digest = hashlib.sha256(header.encode())
    digest.update(tensor_bytes(crop))
    return digest.hexdigest()


def _check_image(image: Any, what: str) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"{what} must be a 3×S×S uint8 tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise ValueError(f"{what} must be a 3×S×S uint8 tensor, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"{what} must be a 3×S×S uint8 tensor, got shape {tuple(image.shape)}")


def _check_input_size(input_size: Sequence[int] | Tensor, side: int) -> tuple[int, int]:
    values = input_size.tolist() if isinstance(input_size, Tensor) else list(input_size)
    valid = len(values) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= side for v in values
    )
    if not valid:
        raise ValueError(
            f"input_size must be (h, w) with 1 <= h, w <= {side} (the padded side), got {values!r}"
        )
    return values[0], values[1]


# ---------------------------------------------------------------------------------- cache


class EmbeddingCache:
    """Image embeddings on disk under ``root`` for the encoder of ``fingerprint`` (see the
    module docstring).

    Args:
        root: the cache directory, created if missing.
        fingerprint: :func:`~sam_lightning.modeling.fingerprint.encoder_fingerprint` of the encoder.
        dtype: the dtype embeddings are stored in: float32, float16 or bfloat16.
        description: JSON values written to a new manifest for people reading it (e.g.
            model type, image size); not compared when a cache is opened.

    Attributes:
        hits, misses: embeddings read from disk and computed, since this object was made.
        manifest: the manifest read from disk.

    Raises:
        StaleCacheError: the manifest has another format, fingerprint or dtype.
        ValueError: an unknown dtype, a description that is not JSON, or a manifest that is
            corrupt or cannot be read.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        fingerprint: str,
        dtype: torch.dtype = torch.float32,
        description: Mapping[str, Any] | None = None,
    ) -> None:
        names = {value: name for name, value in DTYPES.items()}
        if dtype not in names:
            raise ValueError(
                f"embedding cache dtype must be one of {', '.join(DTYPES)}, got {dtype}"
            )
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        wanted = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "dtype": names[dtype],
            "description": dict(description or {}),
        }
        try:
            data = json.dumps(wanted, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"embedding cache description must hold JSON values: {err}") from None
        path = self.root / MANIFEST_NAME
        if not path.exists():
            write_if_absent(path, (data + "\n").encode())
        self.manifest = _read_manifest(path)
        for field in ("format", "fingerprint", "dtype"):
            if self.manifest[field] != wanted[field]:
                raise StaleCacheError(self.root, field, self.manifest[field], wanted[field])

    def path(self, key: str) -> Path:
        """The entry file of ``key``."""
        return self.root / key[:2] / f"{key}.safetensors"

    def embed(
        self, encode: Callable[[list[Tensor]], Tensor], images: Tensor, input_sizes: Tensor
    ) -> Tensor:
        """The embeddings of a batch: read from the cache, the missing ones computed by one
        call of ``encode`` (under ``torch.no_grad``) and stored.

        Args:
            encode: embeds a list of unpadded ``3×h×w`` uint8 images (on the device of
                ``images``) to ``N×C×h'×w'``, e.g. ``Sam.encode_images``. Called once with
                the missing images (each distinct image once), or not at all.
            images: ``B×3×S×S`` uint8, zero-padded (the ``images`` of a batch).
            input_sizes: ``B×2`` (h, w) of the unpadded parts.

        Returns:
            ``B×C×h'×w'`` float32 on the device of ``images``, in batch order: the stored
            values (those of ``encode`` rounded to the cache dtype, exactly those of
            ``encode`` for a float32 cache).

        Raises:
            StaleCacheError: an entry made for another encoder or key.
            ValueError: a batch of another shape or dtype, or ``encode`` returning a tensor
                of the wrong shape.
        """
        sizes = self._check_batch(images, input_sizes)
        host = images.detach().cpu()
        keys = [image_key(host[i], sizes[i]) for i in range(len(sizes))]
        found: dict[str, Tensor] = {}
        for key in dict.fromkeys(keys):
            embedding = self._read(key)
            if embedding is not None:
                found[key] = embedding
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            first = {key: keys.index(key) for key in missing}
            crops = [
                images[i, :, : sizes[i][0], : sizes[i][1]] for i in (first[k] for k in missing)
            ]
            with torch.no_grad():
                encoded = encode(crops)
            if not isinstance(encoded, Tensor) or encoded.ndim != 4 or len(encoded) != len(crops):
                shape = tuple(encoded.shape) if isinstance(encoded, Tensor) else type(encoded)
                raise ValueError(
                    f"encode must return a {len(crops)}×C×h×w tensor for {len(crops)} images, "
                    f"got {shape}"
                )
            stored = encoded.detach().to(self.dtype)
            for key, embedding in zip(missing, stored.cpu()):
                self._write(key, embedding)
            for key, embedding in zip(missing, stored):
                found[key] = embedding
        shapes = {tuple(embedding.shape) for embedding in found.values()}
        if len(shapes) > 1:
            by_shape = {tuple(found[k].shape): self.path(k) for k in found}
            listing = "; ".join(f"{shape} in {path}" for shape, path in by_shape.items())
            raise ValueError(
                f"embedding cache {self.root} holds embeddings of several shapes: {listing}"
            )
        hit_count = sum(key not in missing for key in keys)
        self.hits += hit_count
        self.misses += len(keys) - hit_count
        device = images.device
        return torch.stack([found[key].to(device=device, dtype=torch.float32) for key in keys])

    def _check_batch(self, images: Tensor, input_sizes: Tensor) -> list[tuple[int, int]]:
        """The (h, w) of each image of a valid batch; else ValueError."""
        if not isinstance(images, Tensor) or images.ndim != 4 or len(images) == 0:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a B×3×S×S uint8 tensor with B >= 1, got {shape}")
        _check_image(images[0], "each of images")
        sizes = input_sizes.tolist() if isinstance(input_sizes, Tensor) else input_sizes
        if not isinstance(sizes, list) or len(sizes) != len(images):
            shape = tuple(input_sizes.shape) if isinstance(input_sizes, Tensor) else sizes
            raise ValueError(
                f"input_sizes must be {len(images)}×2 (h, w) for {len(images)} images, got {shape}"
            )
        return [_check_input_size(size, images.shape[-1]) for size in sizes]

    def _read(self, key: str) -> Tensor | None:
        """The embedding stored for ``key``: None if there is none or it is corrupt (with a
        warning); StaleCacheError if it belongs to another encoder, dtype or key."""
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as entry:
                metadata = entry.metadata() or {}
                names = list(entry.keys())
                embedding = entry.get_tensor(_TENSOR) if names == [_TENSOR] else None
        except FileNotFoundError:
            return None
        except Exception as err:  # SafetensorError, OSError...: truncated, garbage, unreadable
            return self._corrupt(path, f"{type(err).__name__}: {err}")
        if embedding is None:
            return self._corrupt(path, f"it holds the tensors {names}, not [{_TENSOR!r}]")
        fields = ("format", "fingerprint", "key", "crc32")
        absent = [field for field in fields if field not in metadata]
        if absent:
            return self._corrupt(path, f"its metadata lacks {', '.join(absent)}")
        current = {"format": str(FORMAT_VERSION), "fingerprint": self.fingerprint, "key": key}
        for field, value in current.items():
            if metadata[field] != value:
                raise StaleCacheError(path, field, metadata[field], value)
        if embedding.dtype != self.dtype:
            raise StaleCacheError(path, "dtype", str(embedding.dtype), str(self.dtype))
        if embedding.ndim != 3:
            return self._corrupt(path, f"its embedding has shape {tuple(embedding.shape)}")
        crc = zlib.crc32(tensor_bytes(embedding.contiguous()))
        if metadata["crc32"] != str(crc):
            return self._corrupt(
                path, f"its data's crc32 is {crc}, the metadata says {metadata['crc32']}"
            )
        return embedding

    def _corrupt(self, path: Path, reason: str) -> None:
        warnings.warn(
            f"embedding cache entry {path} is corrupt and will be recomputed: {reason}",
            CorruptEntryWarning,
            stacklevel=4,
        )
        return None

    def _write(self, key: str, embedding: Tensor) -> None:
        """Stores ``embedding`` (``C×h×w``, on the CPU, in the cache dtype) atomically."""
        embedding = embedding.contiguous()
        metadata = {
            "format": str(FORMAT_VERSION),
            "fingerprint": self.fingerprint,
            "key": key,
            "crc32": str(zlib.crc32(tensor_bytes(embedding))),
        }
        with atomic_path(self.path(key)) as tmp:
            save_file({_TENSOR: embedding}, str(tmp), metadata=metadata)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest in ``path``, checked; ValueError naming the file if it cannot be read or
    is corrupt (after a few short retries, in case another process is still writing it)."""
    for attempt in range(_MANIFEST_READ_TRIES):
        try:
            return _parse_manifest(path, path.read_bytes())
        except OSError as err:
            problem = f"cannot be read: {err.strerror or err}"
            if attempt + 1 < _MANIFEST_READ_TRIES and isinstance(err, FileNotFoundError):
                time.sleep(0.1)
                continue
            raise ValueError(f"embedding cache manifest {path} {problem}") from None
        except ValueError:
            if attempt + 1 < _MANIFEST_READ_TRIES:
                time.sleep(0.1)
                continue
            raise
    raise AssertionError("unreachable")


def _parse_manifest(path: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"embedding cache manifest {path} is corrupt (not valid JSON: {err}); "
            f"delete the directory {path.parent} or choose another training.embedding_cache "
            "directory"
        ) from None
    expected = {"format": int, "fingerprint": str, "dtype": str, "description": dict}
    if not isinstance(manifest, dict):
        problem = f"expected a JSON object, got {type(manifest).__name__}"
    else:
        wrong = [
            field
            for field, kind in expected.items()
            if not isinstance(manifest.get(field), kind) or isinstance(manifest.get(field), bool)
        ]
        if not wrong:
            return manifest
        problem = ", ".join(f"{field}={manifest.get(field)!r}" for field in wrong)
        problem = f"missing or invalid fields: {problem}"
    raise ValueError(
        f"embedding cache manifest {path} is corrupt ({problem}); delete the directory "
        f"{path.parent} or choose another training.embedding_cache directory"
    )


# ---------------------------------------------------------------------------- eligibility


def cache_problems(
    *,
    frozen: Sequence[str] = ("image_encoder",),
    lsj: bool = False,
    drop_path_rate: float = 0.0,
    lora_on_encoder: bool = False,
) -> list[str]:
    """Why a training configuration cannot cache image embeddings, one line per reason;
    an empty list when it can. (The defaults are cacheable: the data module checks ``lsj``,
    the training module the rest.)

    Args:
        frozen: the frozen parts (``training.frozen``).
        lsj: large-scale jitter (``data.lsj``).
        drop_path_rate: the encoder's stochastic depth (``training.drop_path_rate``).
        lora_on_encoder: whether LoRA adapters (``model.lora.targets``) are on image
            encoder modules.
    """
    problems = []
    if "image_encoder" not in frozen:
        problems.append(
            "the image encoder is trained: training.frozen must list image_encoder, or its "
            "embeddings change at every step"
        )
    if lsj:
        problems.append(
            "large-scale jitter is on: data.lsj=true changes the image (scale and crop) every epoch"
        )
    if lora_on_encoder:
        problems.append(
            "LoRA adapters train the image encoder: model.lora.targets matches image_encoder "
            "modules"
        )
    if drop_path_rate > 0:
        problems.append(
            f"the encoder uses drop path: training.drop_path_rate={drop_path_rate:g} > 0 makes "
            "the encoder's output random in training"
        )
    return problems


def open_model_cache(
    model: nn.Module,
    root: str | os.PathLike[str],
    dtype: str = "float32",
    precision: str = "32-true",
    description: Mapping[str, Any] | None = None,
) -> EmbeddingCache:
    """The cache at ``root`` for SAM ``model``'s image encoder: fingerprinted by its weights,
    the model's pixel normalisation and the training ``precision`` (autocast changes the
    embeddings); entries in ``dtype`` (a name of :data:`DTYPES`)."""
    extra = {"pixel_mean": model.pixel_mean, "pixel_std": model.pixel_std, "precision": precision}
    fingerprint = encoder_fingerprint(model.image_encoder, extra)
    return EmbeddingCache(root, fingerprint, DTYPES[dtype], description=description)
