"""Fixtures of the operator tests: which kernel backend runs."""

from __future__ import annotations

import pytest
from backends import BACKENDS, kernels_of

from sam_lightning.ops import rle
from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Runs a test once per kernel backend of :mod:`sam_lightning.ops.rle`."""
    if request.param == "compiled" and not HAS_EXTENSION:
        pytest.skip(f"compiled extension not loaded: {LOAD_ERROR}")
    monkeypatch.setattr(rle, "_KERNELS", kernels_of(request.param))
    return request.param
