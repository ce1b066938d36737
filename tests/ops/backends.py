"""The kernel backends of :mod:`sam_lightning.ops` and how tests switch between them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from sam_lightning.ops import _postprocess_reference, _rle_reference, postprocess, rle
from sam_lightning.ops._extension import HAS_EXTENSION

BACKENDS = ["compiled", "reference"]
# The public modules whose ``_KERNELS`` a backend switch replaces, with their reference.
_REFERENCES = {rle: _rle_reference, postprocess: _postprocess_reference}


def kernels_of(backend: str, module: ModuleType = rle):
    return torch.ops.sam_lightning if backend == "compiled" else _REFERENCES[module]


@contextmanager
def each_backend(module: ModuleType = rle) -> Iterator[Iterator[str]]:
    """For hypothesis tests (which cannot take function-scoped fixtures): iterating the
    yielded object switches ``module`` (:mod:`sam_lightning.ops.rle` by default) to each
    available backend."""
    original = module._KERNELS

    def switch() -> Iterator[str]:
        for name in BACKENDS:
            if name == "compiled" and not HAS_EXTENSION:
                continue
            module._KERNELS = kernels_of(name, module)
            yield name

    try:
        yield switch()
    finally:
        module._KERNELS = original
