"""Test-only stand-in for the three ``timm.models.layers`` names that MobileSAM's
``tiny_vit_sam`` imports, with timm's semantics."""

from __future__ import annotations

import collections.abc
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DropPath", "drop_path", "to_2tuple", "trunc_normal_"]


def drop_path(
    x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True
) -> Tensor:
    """Zeroes whole samples (first dimension) with probability ``drop_prob`` in training;
    the kept ones are divided by the keep probability when ``scale_by_keep``."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Stochastic depth of a residual branch (per sample), active in training mode only."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


def to_2tuple(x: Any) -> tuple:
    """An iterable (not a string) as a tuple; anything else repeated twice."""
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return (x, x)


def trunc_normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
) -> Tensor:
    """In place: normal ``(mean, std)`` values truncated to ``[a, b]`` (absolute bounds)."""
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)
