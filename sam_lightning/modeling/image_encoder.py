"""MAE ViT image encoder of SAM (ViTDet-style windowed/global attention, conv neck), with
optional stochastic depth and activation checkpointing for training."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sam_lightning.modeling.common import LayerNorm2d, MLPBlock


class ImageEncoderViT(nn.Module):
    """ViT backbone mapping a padded ``B×3×img_size×img_size`` image to ``B×out_chans×h×w``
    features, ``h = w = img_size // patch_size``.

    Args:
        img_size: side of the square (padded) input image.
        patch_size: side of the square patches.
        in_chans: input image channels.
        embed_dim: token channels.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden channels / embed_dim.
        out_chans: channels of the output feature map.
        qkv_bias: learn a bias in the qkv projection.
        norm_layer: token normalisation class, called with the channel count.
        act_layer: MLP activation class.
        use_abs_pos: add a learned absolute position embedding ``1×h×w×embed_dim``.
        use_rel_pos: add decomposed relative position biases to the attention logits.
        window_size: window side of the windowed blocks (0: all blocks global).
        global_attn_indexes: indexes of the blocks using global attention.
        drop_path_rate: stochastic depth rate of the last block; block ``i`` drops its
            residual branches with rate ``linspace(0, drop_path_rate, depth)[i]`` (training
            mode only). No parameters: state dicts are the same for every rate.
        activation_checkpointing: in training mode with gradients enabled, run each block
            under ``torch.utils.checkpoint`` (recomputed in the backward pass: less memory,
            same results). A plain attribute: it may be toggled after construction.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | partial[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        global_attn_indexes: Sequence[int] = (),
        drop_path_rate: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.img_size = img_size
        self.activation_checkpointing = activation_checkpointing
        grid = img_size // patch_size
        # On the CPU explicitly: models may be built under ``torch.device("meta")``.
        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                drop_path=drop_path_rates[i],
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def layer_decay_exponent(self, name: str) -> int:
        """Layer-wise learning-rate decay (MAE/ViTDet): the parameter ``name`` (relative to
        the encoder) trains at ``lr * decay ** exponent``: ``depth + 1`` for the patch and
        position embeddings, ``depth - i`` for block ``i``, 0 for the neck."""
        depth = len(self.blocks)
        if name.startswith(("patch_embed.", "pos_embed")):
            return depth + 1
        head, _, rest = name.partition(".")
        if head == "blocks":
            return depth - int(rest.split(".", 1)[0])
        return 0

    def forward(self, images_b3hw: Tensor) -> Tensor:
        """``B×3×img_size×img_size`` normalised, padded images -> ``B×out_chans×h×w``."""
        x_bhwc = self.patch_embed(images_b3hw)
        if self.pos_embed is not None:
            x_bhwc = x_bhwc + self.pos_embed
        use_checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                # preserve_rng_state (the default) replays the drop-path draws exactly.
                x_bhwc = checkpoint(block, x_bhwc, use_reentrant=False)
            else:
                x_bhwc = block(x_bhwc)
        return self.neck(x_bhwc.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``B×C×H×W`` -> ``B×(H/p)×(W/p)×embed_dim``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x_bchw: Tensor) -> Tensor:
        return self.proj(x_bchw).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention.

    Args:
        dim: token channels.
        num_heads: attention heads.
        mlp_ratio: MLP hidden channels / dim.
        qkv_bias: learn a bias in the qkv projection.
        norm_layer, act_layer: normalisation and activation classes.
        use_rel_pos: use decomposed relative position biases.
        window_size: window side; 0 for global attention.
        input_size: token grid ``(h, w)`` of global attention (sizes the rel-pos tables).
        drop_path: stochastic depth rate of the two residual branches (training only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | partial[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=(window_size, window_size) if window_size > 0 else input_size,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size
        self.drop_path = DropPath(drop_path)

    def forward(self, x_bhwc: Tensor) -> Tensor:
        h, w = x_bhwc.shape[1:3]
        x = self.norm1(x_bhwc)
        if self.window_size > 0:
            windows, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = x_bhwc + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training mode, zeroes a residual branch per sample (batch
    dimension) with probability ``drop_prob`` and scales the kept ones by
    ``1 / (1 - drop_prob)``; the identity in eval mode or with ``drop_prob == 0``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Attention(nn.Module):
    """Multi-head self-attention over a ``B×H×W×C`` token grid, optionally with decomposed
    relative position biases (MViTv2), computed with ``scaled_dot_product_attention``.

    Args:
        dim: token channels.
        num_heads: attention heads.
        qkv_bias: learn a bias in the qkv projection.
        use_rel_pos: add decomposed relative position biases.
        input_size: token grid ``(h, w)``; sizes the tables ``rel_pos_h`` ``(2h-1)×head_dim``
            and ``rel_pos_w`` ``(2w-1)×head_dim`` (required when ``use_rel_pos``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required with use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x_bhwc: Tensor) -> Tensor:
        b, h, w, _ = x_bhwc.shape
        # 3 × B × heads × (h*w) × head_dim
        qkv = self.qkv(x_bhwc).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def window_partition(x_bhwc: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Splits ``B×H×W×C`` tokens into ``(B*num_windows)×ws×ws×C`` windows, zero-padding
    the bottom/right edges to a multiple of ``ws``. Returns the windows and the padded size."""
    b, h, w, c = x_bhwc.shape
    pad_h, pad_w = -h % window_size, -w % window_size
    if pad_h or pad_w:
        x_bhwc = F.pad(x_bhwc, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x_bhwc.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: windows -> ``B×H×W×C`` with the padding removed."""
    (hp, wp), (h, w) = padded_hw, hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings ``q_size×k_size×C`` gathered from the table
    ``rel_pos`` ``L×C`` (linearly resized to ``2*max(q_size, k_size)-1`` rows if needed)."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_scale, k_scale = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    relative_coords = (q_coords - k_coords) + (k_size - 1) * k_scale
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_bias(
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> Tensor:
    """Additive attention bias of decomposed relative positions (MViTv2).

    Args:
        q: unscaled queries ``...×(q_h*q_w)×C``.
        rel_pos_h, rel_pos_w: tables ``Lh×C`` and ``Lw×C`` for the height and width axes.
        q_size, k_size: query and key grids ``(h, w)``.

    Returns:
        ``...×(q_h*q_w)×(k_h*k_w)`` bias: ``q·Rh[qy, ky] + q·Rw[qx, kx]``.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_q = q.reshape(*q.shape[:-2], q_h, q_w, q.shape[-1])
    rel_h = torch.einsum("...hwc,hkc->...hwk", r_q, get_rel_pos(q_h, k_h, rel_pos_h))
    rel_w = torch.einsum("...hwc,wkc->...hwk", r_q, get_rel_pos(q_w, k_w, rel_pos_w))
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    return bias.reshape(*q.shape[:-2], q_h * q_w, k_h * k_w)
