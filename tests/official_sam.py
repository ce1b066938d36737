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


def import_with_shims(
    package: str, submodules: tuple[str, ...], shimmed: tuple[str, ...]
) -> ModuleType:
    """Imports ``submodules`` of a reference ``package`` with the stand-ins for the
    ``shimmed`` top-level packages on ``sys.path``, then forgets the stand-ins again (those
    that were not imported before), so no other test sees them."""
    if package in sys.modules:
        return sys.modules[package]
    had = {top for top in shimmed if top in sys.modules}

    def is_shim(name: str) -> bool:
        top = name.split(".")[0]
        return top in shimmed and top not in had

    sys.path.insert(0, _SHIMS)
    try:
        for name in submodules:
            importlib.import_module(name)
    finally:
        sys.path.remove(_SHIMS)
        for name in [m for m in sys.modules if is_shim(m)]:
            del sys.modules[name]
    return sys.modules[package]


def import_official() -> ModuleType:
    """Returns the official ``segment_anything`` package, importing it on first use."""
    return import_with_shims("segment_anything", _SUBMODULES, ("torchvision",))
