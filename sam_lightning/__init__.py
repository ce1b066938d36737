"""sam_lightning: training, evaluation and fast operators for Segment Anything (SAM).

Public API: :func:`build_sam`, :class:`SamPredictor`, :class:`SamAutomaticMaskGenerator` and
:mod:`sam_lightning.ops`.
Heavy submodules are imported on first use, so ``import sam_lightning`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "build_sam": "sam_lightning.modeling.build",
    "sam_model_registry": "sam_lightning.modeling.build",
    "Sam": "sam_lightning.modeling.sam",
    "SamPredictor": "sam_lightning.inference.predictor",
    "SamAutomaticMaskGenerator": "sam_lightning.inference.automatic",
    "load_checkpoint": "sam_lightning.modeling.checkpoint",
    "save_checkpoint": "sam_lightning.modeling.checkpoint",
}
_LAZY_MODULES = ("ops", "modeling", "inference")

__all__ = [
    "__version__",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "inference",
    "load_checkpoint",
    "modeling",
    "ops",
    "sam_model_registry",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from sam_lightning import inference, modeling, ops
    from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
    from sam_lightning.inference.predictor import SamPredictor
    from sam_lightning.modeling.build import build_sam, sam_model_registry
    from sam_lightning.modeling.checkpoint import load_checkpoint, save_checkpoint
    from sam_lightning.modeling.sam import Sam


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"sam_lightning.{name}")
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'sam_lightning' has no attribute {name!r}")
