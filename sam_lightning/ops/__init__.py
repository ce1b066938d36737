"""Compiled operators of sam_lightning, with reference fallbacks.

Every function dispatches to ``torch.ops.sam_lightning.*`` when the compiled extension is
loaded (see :mod:`sam_lightning.ops._extension`) and to a pure Python/NumPy reference
implementation otherwise.
"""

from sam_lightning.ops._extension import HAS_EXTENSION, LOAD_ERROR

__all__ = ["HAS_EXTENSION", "LOAD_ERROR"]
