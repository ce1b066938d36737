"""Transformer parts of TinyViT: attention with a learned relative-position bias table
(LeViT style), the pre-norm MLP, the windowed TinyViT block and its stage."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_lightning.modeling.image_encoder import DropPath, window_partition, window_unpartition
from sam_lightning.modeling.tiny_vit.checkpointing import checkpointed
from sam_lightning.modeling.tiny_vit.convolutions import Conv2dBN, PatchMerging


def relative_offset_indexes(resolution: tuple[int, int]) -> Tensor:
    """``N×N`` long indexes (``N = h*w``, tokens row-major) of the offset
    ``(|dy|, |dx|)`` between two tokens of an ``h×w`` grid, numbered ``|dy|*w + |dx|``:
    the order in which LeViT/TinyViT enumerate the offsets from token ``(0, 0)``."""
    h, w = resolution
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * w + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over ``B×N×dim`` tokens of an ``h×w`` grid, with
    a learned bias per head and per token offset ``(|dy|, |dx|)`` added to the logits.

    Args:
        dim: token channels.
        key_dim: channels per head of the queries and keys.
        num_heads: attention heads.
        attn_ratio: value channels per head / key_dim.
        resolution: token grid ``(h, w)`` (a window); sizes ``attention_biases``
            ``heads×(h*w)``.

    The qkv projection is laid out per head: ``[q | k | v]`` for head 0, then head 1, ...
    The offset index table ``attention_bias_idxs`` is a non-persistent buffer (not in the
    state dict); the bias ``heads×N×N`` is gathered from it at every call (no cache).
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        resolution: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.value_dim))
        self.proj = nn.Linear(num_heads * self.value_dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution[0] * resolution[1]))
        self.register_buffer(
            "attention_bias_idxs", relative_offset_indexes(resolution), persistent=False
        )

    def forward(self, x_bnc: Tensor) -> Tensor:
        b, n, _ = x_bnc.shape
        qkv = self.qkv(self.norm(x_bnc)).view(b, n, self.num_heads, -1)
        # B × heads × N × channels
        q, k, v = qkv.permute(0, 2, 1, 3).split([self.key_dim, self.key_dim, self.value_dim], -1)
        bias_hnn = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias_hnn, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """Pre-norm feed-forward block ``fc2(drop(act(fc1(norm(x)))))`` with dropout after each
    linear layer, on the last dimension."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(self.norm(x))))
        return self.drop(self.fc2(x))


class TinyViTBlock(nn.Module):
    """TinyViT block on ``B×H×W×dim`` tokens: windowed attention (zero padding at the
    bottom/right edges, padded tokens attended to as in the reference) with a residual,
    a depthwise conv-BN (``local_conv``), then the MLP with a residual.

    Args:
        dim: token channels (divisible by ``num_heads``).
        num_heads: attention heads.
        window_size: window side (> 0).
        mlp_ratio: MLP hidden channels / dim.
        drop: dropout rate in the MLP.
        drop_path: stochastic depth rate of the two residual branches (training only).
        local_conv_size: kernel side of the depthwise convolution.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError(f"window_size must be > 0, got {window_size}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window_size = window_size
        self.attn = Attention(
            dim, dim // num_heads, num_heads, attn_ratio=1, resolution=(window_size,) * 2
        )
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop=drop)
        self.local_conv = Conv2dBN(
            dim, dim, local_conv_size, padding=local_conv_size // 2, groups=dim
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x_bhwc: Tensor) -> Tensor:
        b, h, w, c = x_bhwc.shape
        ws = self.window_size
        windows, padded_hw = window_partition(x_bhwc, ws)
        attended = self.attn(windows.reshape(-1, ws * ws, c)).view(-1, ws, ws, c)
        attended = window_unpartition(attended, ws, padded_hw, (h, w))
        x_bhwc = x_bhwc + self.drop_path(attended)
        x_bhwc = self.local_conv(x_bhwc.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x_bhwc + self.drop_path(self.mlp(x_bhwc))


class BasicLayer(nn.Module):
    """A TinyViT transformer stage: ``depth`` TinyViT blocks on ``B×H×W×dim`` tokens, then
    an optional PatchMerging into ``out_dim`` channels.

    Args:
        dim: token channels.
        depth: number of blocks.
        num_heads, window_size, mlp_ratio, drop, local_conv_size: see :class:`TinyViTBlock`.
        drop_path: stochastic depth rate of each block.
        out_dim: channels after the PatchMerging; ``None``: no downsampling.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        local_conv_size: int = 3,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if len(drop_path) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(drop_path)}")
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, drop, rate, local_conv_size)
            for rate in drop_path
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def forward(self, x_bhwc: Tensor, use_checkpoint: bool = False) -> Tensor:
        """``B×H×W×dim`` -> ``B×H'×W'×out_dim`` (``B×H×W×dim`` without downsampling)."""
        for block in self.blocks:
            x_bhwc = checkpointed(block, x_bhwc) if use_checkpoint else block(x_bhwc)
        if self.downsample is None:
            return x_bhwc
        x_bchw = x_bhwc.permute(0, 3, 1, 2)
        if use_checkpoint:
            return checkpointed(self.downsample, x_bchw).permute(0, 2, 3, 1)
        return self.downsample(x_bchw).permute(0, 2, 3, 1)
