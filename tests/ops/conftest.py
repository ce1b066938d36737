"""Fixtures of the operator tests: which kernel backend runs."""

from __future__ import annotations

import pytest
import torch

from sam_lightning.ops import _rle_reference, rle
from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR

BACKENDS = ["compiled", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Runs a test once per kernel backend of :mod:`sam_lightning.ops.rle`."""
    if request.param == "compiled":
        if not HAS_EXTENSION:
            pytest.skip(f"compiled extension not loaded: {LOAD_ERROR}")
        monkeypatch.setattr(rle, "_KERNELS", torch.ops.sam_lightning)
    else:
        monkeypatch.setattr(rle, "_KERNELS", _rle_reference)
    return request.param
