"""Imports the official ``segment_anything`` package for parity tests.

The official package imports torchvision, which cannot be installed here; the stand-in in
``tests/reference_shims`` is on ``sys.path`` only for the duration of the import.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

_SHIMS = str(Path(__file__).parent / "reference_shims")
_SUBMODULES = (
    "segment_anything",
    "segment_anything.modeling",
    "segment_anything.predictor",
    "segment_anything.automatic_mask_generator",
    "segment_anything.utils.amg",
    "segment_anything.utils.transforms",
)


def import_official() -> ModuleType:
    """Returns the official ``segment_anything`` package, importing it on first use."""
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    had_torchvision = "torchvision" in sys.modules
    sys.path.insert(0, _SHIMS)
    try:
        for name in _SUBMODULES:
            importlib.import_module(name)
    finally:
        sys.path.remove(_SHIMS)
        if not had_torchvision:
            for name in [
                m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")
            ]:
                del sys.modules[name]
    return sys.modules["segment_anything"]
