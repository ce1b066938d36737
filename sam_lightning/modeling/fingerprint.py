"""Fingerprints of weights: a SHA-256 over every tensor of a module's state dict, which
identifies the weights that computed a cached embedding (the training embedding cache, the
annotation tool's disk cache)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: Version of the fingerprint's layout; another version gives other fingerprints.
FINGERPRINT_VERSION = 1


def encoder_fingerprint(encoder: nn.Module, extra: Mapping[str, Any] | None = None) -> str:
    """The sha256 (hex) of ``encoder``'s whole ``state_dict()`` (parameters and persistent
    buffers): for each key in sorted order, the key, dtype, shape and the raw bytes of the
    tensor. Any change of one value, dtype or shape changes it.

    Args:
        extra: further values the embeddings depend on that are not in the encoder's state
            dict, hashed the same way after it: tensors (e.g. ``Sam.pixel_mean`` and
            ``pixel_std``, non-persistent buffers of the model) or JSON values (e.g. the
            training precision).

    Raises:
        TypeError: a value that is neither a tensor nor a JSON value, naming its key.
    """
    digest = hashlib.sha256(f"sam_lightning.encoder.v{FINGERPRINT_VERSION}\n".encode())
    state = encoder.state_dict()
    for key in sorted(state):
        _hash_value(digest, "state", key, state[key])
    for key in sorted(extra or {}):
        _hash_value(digest, "extra", key, extra[key])  # type: ignore[index]
    return digest.hexdigest()


def _hash_value(digest: Any, section: str, key: str, value: Any) -> None:
    """Adds ``value`` to ``digest``: a header line naming it, then its bytes."""
    if isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous()
        header = [section, key, "tensor", str(tensor.dtype), list(tensor.shape)]
        digest.update(json.dumps(header).encode() + b"\n")
        digest.update(tensor_bytes(tensor))
        return
    try:
        text = json.dumps([section, key, "json", value], sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise TypeError(
            f"cannot fingerprint {section} entry {key!r}: {type(value).__name__} is neither a "
            "tensor nor a JSON value"
        ) from None
    digest.update(text.encode() + b"\n")


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor (any dtype, bfloat16 included)."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


# ------------------------------------------------------------------------------ image key
