"""MobileSAM's TinyViT image encoder (``vit_t``): a 1024² image to SAM's 256×64×64 image
embedding."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sam_lightning.modeling.common import LayerNorm2d
from sam_lightning.modeling.tiny_vit.attention import BasicLayer
from sam_lightning.modeling.tiny_vit.convolutions import (
    STRIDE_ONE_OUT_DIMS,
    ConvLayer,
    PatchEmbed,
)

_LAYER_PARAMETER = re.compile(r"layers\.(\d+)\.(?:blocks\.(\d+)|downsample)\.")


class TinyViT(nn.Module):
    """TinyViT backbone of MobileSAM mapping a normalised, padded ``B×3×1024×1024`` image
    to ``B×256×64×64`` features; state-dict keys and numerics as MobileSAM's reference, so
    the released ``mobile_sam.pt`` encoder weights load strictly.

    Stages: a 4× conv patch embedding, a convolutional stage of MBConv blocks, then
    transformer stages of windowed attention blocks; a PatchMerging ends every stage but
    the last (stride 2, except into 320/448/576 channels: stride 1), then SAM's conv neck.

    The ImageNet classifier ``norm_head`` and ``head`` is kept so that the checkpoint loads
    strictly, but ``forward`` never uses it: its parameters get no gradients. Keep them out
    of the optimiser with :meth:`unused_parameters` (prefixes ``UNUSED_PREFIXES``), and
    freeze them (``requires_grad_(False)``) under DDP without ``find_unused_parameters``.

    Layer-wise lr decay (the reference's ``layer_lr_decay``, not reproduced here: it only
    sets ``lr_scale`` attributes for its own optimiser): parameter ``name`` gets the scale
    ``decay ** (num_blocks - 1 - block_depth(name))`` (:meth:`layer_decay_exponent`).

    Args:
        img_size: side of the square input; 1024 only (else ``ValueError``).
        in_chans: input image channels.
        num_classes: outputs of the unused classifier ``head`` (0: ``nn.Identity``).
        embed_dims: channels of each stage.
        depths: blocks of each stage.
        num_heads: attention heads of each stage (the first, convolutional, ignores it).
        window_sizes: attention window side of each stage (the first ignores it).
        mlp_ratio: MLP hidden channels / channels.
        drop_rate: dropout rate in the MLPs.
        drop_path_rate: stochastic depth rate of the last block; block ``i`` (over all
            stages) uses ``linspace(0, drop_path_rate, sum(depths))[i]`` (training only).
        mbconv_expand_ratio: MBConv hidden channels / channels.
        local_conv_size: kernel side of the depthwise conv in the attention blocks.
        activation_checkpointing: in training mode with gradients enabled, run each block
            and PatchMerging under ``torch.utils.checkpoint`` (recomputed in the backward
            pass: less memory, same results and BatchNorm statistics). A plain attribute:
            it may be toggled after construction.
    """

    UNUSED_PREFIXES = ("norm_head.", "head.")

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if img_size != 1024:
            raise ValueError(
                f"TinyViT as released works at 1024 only, got img_size={img_size}: "
                "forward_features reshapes to 64×64 and PatchMerging's stride depends on "
                f"out_dim {'/'.join(map(str, STRIDE_ONE_OUT_DIMS))}"
            )
        num_stages = len(depths)
        if not num_stages or any(
            len(s) != num_stages for s in (embed_dims, num_heads, window_sizes)
        ):
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage, "
                f"got {list(embed_dims)}, {list(depths)}, {list(num_heads)}, "
                f"{list(window_sizes)}"
            )
        grid = img_size // 4
        for out_dim in embed_dims[1:]:
            grid //= 1 if out_dim in STRIDE_ONE_OUT_DIMS else 2
        if grid != 64:
            raise ValueError(
                f"embed_dims {list(embed_dims)} give a {grid}×{grid} output grid, not 64×64 "
                f"(PatchMerging keeps the resolution only into {STRIDE_ONE_OUT_DIMS})"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.img_size = img_size
        self.activation_checkpointing = activation_checkpointing
        self.depths = tuple(depths)
        # On the CPU explicitly: models may be built under ``torch.device("meta")``.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(num_stages)]

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, (dim, depth, start) in enumerate(zip(embed_dims, depths, starts)):
            out_dim = embed_dims[i + 1] if i + 1 < num_stages else None
            stage_rates = rates[start : start + depth]
            if i == 0:
                self.layers.append(
                    ConvLayer(dim, depth, stage_rates, out_dim, expand_ratio=mbconv_expand_ratio)
                )
            else:
                self.layers.append(
                    BasicLayer(
                        dim,
                        depth,
                        num_heads[i],
                        window_sizes[i],
                        stage_rates,
                        mlp_ratio=mlp_ratio,
                        drop=drop_rate,
                        local_conv_size=local_conv_size,
                        out_dim=out_dim,
                    )
                )
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head: nn.Module = (
            nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        )
        self.apply(_init_linear_and_layer_norm)  # before the neck, as the reference
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], 256, kernel_size=1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    def forward(self, images_b3hw: Tensor) -> Tensor:
        """``B×3×1024×1024`` normalised, padded images -> ``B×256×64×64``."""
        if images_b3hw.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"TinyViT expects B×C×{self.img_size}×{self.img_size} images, "
                f"got {tuple(images_b3hw.shape)}"
            )
        use_checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        first, *rest = self.layers
        x_bhwc = first(self.patch_embed(images_b3hw), use_checkpoint).permute(0, 2, 3, 1)
        for layer in rest:
            x_bhwc = layer(x_bhwc, use_checkpoint)
        return self.neck(x_bhwc.permute(0, 3, 1, 2))

    @property
    def num_blocks(self) -> int:
        """Blocks over all stages (``sum(depths)``): depths run ``0 .. num_blocks - 1``."""
        return sum(self.depths)

    def block_depth(self, parameter_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay, as the reference assigns it:
        ``patch_embed`` 0; block ``i`` over all stages (from 0) ``i``, so the first block
        shares depth 0 with the patch embedding; a stage's ``downsample`` the depth of that
        stage's last block; ``norm_head``, ``head`` and ``neck`` ``num_blocks - 1``
        (the reference sets no ``lr_scale`` on the neck, i.e. scale 1: the same).

        Raises:
            ValueError: ``parameter_name`` is not a name in this module.
        """
        if parameter_name.startswith("patch_embed."):
            return 0
        if parameter_name.startswith((*self.UNUSED_PREFIXES, "neck.")):
            return self.num_blocks - 1
        match = _LAYER_PARAMETER.match(parameter_name)
        if match is not None and int(match[1]) < len(self.depths):
            stage = int(match[1])
            first = sum(self.depths[:stage])
            if match[2] is None:
                if self.layers[stage].downsample is not None:
                    return first + self.depths[stage] - 1
            elif int(match[2]) < self.depths[stage]:
                return first + int(match[2])
        raise ValueError(f"{parameter_name!r} is not a TinyViT parameter name")

    def layer_decay_exponent(self, parameter_name: str) -> int:
        """Layer-wise lr decay as ``ImageEncoderViT.layer_decay_exponent``: the parameter
        trains at ``lr * decay ** exponent``, ``exponent = num_blocks - 1 -
        block_depth(parameter_name)`` (0 for the last block, head and neck), which gives
        the reference's ``lr_scale``."""
        return self.num_blocks - 1 - self.block_depth(parameter_name)

    def unused_parameters(self) -> dict[str, nn.Parameter]:
        """The classifier parameters that ``forward`` never uses, by name."""
        return {
            name: p for name, p in self.named_parameters() if name.startswith(self.UNUSED_PREFIXES)
        }


def _init_linear_and_layer_norm(module: nn.Module) -> None:
    """The reference's initialisation: truncated normal (std 0.02, bounds ±2) linear
    weights, zero biases; LayerNorm scale 1, shift 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
