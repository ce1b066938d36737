"""The kernel backends of :mod:`sam_lightning.ops.rle` and how tests switch between them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sam_lightning.ops import _rle_reference, rle
from sam_lightning.ops._extension import HAS_EXTENSION

BACKENDS = ["compiled", "reference"]


def kernels_of(backend: str):
    return torch.ops.sam_lightning if backend == "compiled" else _rle_reference


@contextmanager
def each_backend() -> Iterator[Iterator[str]]:
    """For hypothesis tests (which cannot take function-scoped fixtures): iterating the
    yielded object switches :mod:`sam_lightning.ops.rle` to each available backend."""
    original = rle._KERNELS

    def switch() -> Iterator[str]:
        for name in BACKENDS:
            if name == "compiled" and not HAS_EXTENSION:
                continue
            rle._KERNELS = kernels_of(name)
            yield name

    try:
        yield switch()
    finally:
        rle._KERNELS = original
