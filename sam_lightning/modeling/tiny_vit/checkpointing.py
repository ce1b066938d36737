"""Activation checkpointing of modules that hold BatchNorm layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def checkpointed(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` under ``torch.utils.checkpoint`` (non-reentrant): activations are
    recomputed in the backward pass instead of stored.

    The recomputation runs the module in training mode a second time, which would update
    the BatchNorm running statistics twice per step; they are put back as they were before
    the recomputation, so results and statistics equal an uncheckpointed run.
    ``preserve_rng_state`` (the default) replays the drop-path draws exactly.
    """
    return checkpoint(
        module,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _kept_running_stats(module)),
    )


@contextlib.contextmanager
def _kept_running_stats(module: nn.Module) -> Iterator[None]:
    """Restores the running statistics of ``module``'s BatchNorm layers on exit."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
