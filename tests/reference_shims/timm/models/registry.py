"""Test-only stand-in for ``timm.models.registry``: registration is a no-op here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["register_model"]

_F = TypeVar("_F", bound=Callable)


def register_model(fn: _F) -> _F:
    """Returns ``fn`` unchanged (timm also records it in its model registry, unused here)."""
    return fn
