"""Imports MobileSAM's reference package ``mobile_sam`` for parity tests.

``mobile_sam`` imports timm (its TinyViT encoder) and torchvision (automatic mask generator,
transforms), neither of which can be installed here; the stand-ins in
``tests/reference_shims`` are on ``sys.path`` only for the duration of the import.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
from official_sam import import_with_shims
from torch import nn

_SUBMODULES = (
    "mobile_sam",
    "mobile_sam.modeling",
    "mobile_sam.modeling.tiny_vit_sam",
    "mobile_sam.predictor",
    "mobile_sam.automatic_mask_generator",
    "mobile_sam.utils.amg",
    "mobile_sam.utils.transforms",
)


def import_mobile_sam() -> ModuleType:
    """Returns the reference ``mobile_sam`` package, importing it on first use."""
    return import_with_shims("mobile_sam", _SUBMODULES, ("torchvision", "timm"))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fills every state-dict entry with random values: the init leaves zeros (attention
    biases, BatchNorm shifts and running means, MBConv's last BatchNorm scale) and ones
    (running variances) that would hide bugs. Variances stay positive, scales near 1."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith("num_batches_tracked"):
            tensor.fill_(int(torch.randint(1, 100, (), generator=g)))
        elif name.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
        elif name.endswith("attention_biases"):
            tensor.copy_(torch.randn(tensor.shape, generator=g))
        elif tensor.ndim >= 2:  # conv and linear weights
            tensor.copy_(torch.randn(tensor.shape, generator=g) / math.sqrt(tensor[0].numel()))
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
            if name.endswith("weight"):  # BatchNorm and LayerNorm scales
                tensor.add_(1.0)
    return model
