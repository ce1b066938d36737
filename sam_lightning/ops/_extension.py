"""Loads the compiled operators ``sam_lightning._C`` and remembers why when it cannot.

Importing ``_C`` registers every ``torch.ops.sam_lightning.*`` operator. When the library is
missing (source checkout not built), built against another torch (stale ``.so`` after an
upgrade), or disabled with ``SAM_LIGHTNING_DISABLE_EXTENSION=1``, :data:`LOAD_ERROR` says
why and the Python wrappers in :mod:`sam_lightning.ops` use reference implementations.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

DISABLE_ENV = "SAM_LIGHTNING_DISABLE_EXTENSION"
NAMESPACE = "sam_lightning"
_REBUILD_HINT = (
    "rebuild it with `pip install --no-build-isolation -e .` (see README, Troubleshooting)"
)


def _base_version(version: str) -> str:
    return version.split("+")[0]


def _load() -> tuple[ModuleType | None, str | None]:
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    try:
        module = importlib.import_module("sam_lightning._C")
    except ImportError as error:  # missing, or undefined symbols from another torch
        return None, f"sam_lightning._C could not be imported ({error}); {_REBUILD_HINT}"
    built_for = _base_version(getattr(module, "torch_version", "unknown"))
    running = _base_version(torch.__version__)
    if built_for != running:
        return None, (
            f"sam_lightning._C was built for torch {built_for} but torch {running} is "
            f"installed; {_REBUILD_HINT}"
        )
    return module, None


EXTENSION, LOAD_ERROR = _load()
HAS_EXTENSION: bool = EXTENSION is not None

if LOAD_ERROR is not None:
    warnings.warn(
        f"sam_lightning: compiled operators unavailable, using slower reference "
        f"implementations: {LOAD_ERROR}",
        RuntimeWarning,
        stacklevel=2,
    )


def registered_operators() -> list[str]:
    """Names of the ``torch.ops.sam_lightning`` operators registered by the extension."""
    if not HAS_EXTENSION:
        return []
    return sorted(
        name.split("::", 1)[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith(f"{NAMESPACE}::")
    )


def kernel_backends(operator: str) -> list[str]:
    """Dispatch keys (``CPU``, ``CUDA``) that have a kernel for ``sam_lightning::operator``."""
    qualified = f"{NAMESPACE}::{operator}"
    return [
        key
        for key in ("CPU", "CUDA")
        if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key)
    ]


def built_with_cuda() -> bool:
    """Whether the loaded extension contains CUDA kernels."""
    return HAS_EXTENSION and bool(EXTENSION.built_with_cuda())
