"""Convolutional parts of TinyViT: conv + BatchNorm units, the patch embedding, the
MBConv blocks of the first stage and the patch merging between stages."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from sam_lightning.modeling.image_encoder import DropPath
from sam_lightning.modeling.tiny_vit.checkpointing import checkpointed

# PatchMerging into these widths keeps the resolution: MobileSAM's TinyViT changed the
# stride of the last merging to 1 so that the encoder output is 64×64 at 1024², as SAM's.
STRIDE_ONE_OUT_DIMS = (320, 448, 576)


class Conv2dBN(nn.Module):
    """Bias-free ``Conv2d`` followed by ``BatchNorm2d`` (state-dict keys ``c.*``, ``bn.*``).

    Args:
        in_chans, out_chans: channels in and out.
        kernel_size, stride, padding, dilation, groups: as for ``nn.Conv2d``.
        bn_weight_init: initial BatchNorm scale (0 makes a residual branch start at zero).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding, dilation, groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x_bchw: Tensor) -> Tensor:
        return self.bn(self.c(x_bchw))


class PatchEmbed(nn.Module):
    """Two stride-2 3×3 conv-BN units with a GELU between them: ``B×C×H×W`` ->
    ``B×embed_dim×(H/4)×(W/4)``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        # Indexes 0 and 2 hold the weights (state-dict keys ``seq.0.*``, ``seq.2.*``).
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, stride=2, padding=1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, stride=2, padding=1),
        )

    def forward(self, images_bchw: Tensor) -> Tensor:
        return self.seq(images_bchw)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2 style) on ``B×dim×H×W``: 1×1 expansion, 3×3
    depthwise conv, 1×1 projection (BatchNorm scale initialised to 0), each with
    BatchNorm; GELU after the first two and after the residual sum.

    Args:
        dim: channels in and out.
        expand_ratio: hidden channels / dim.
        drop_path: stochastic depth rate of the residual branch (training only).
    """

    def __init__(self, dim: int, expand_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, 1, bn_weight_init=0.0)
        self.act3 = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x_bchw: Tensor) -> Tensor:
        branch = self.act2(self.conv2(self.act1(self.conv1(x_bchw))))
        return self.act3(self.drop_path(self.conv3(branch)) + x_bchw)


class PatchMerging(nn.Module):
    """Downsampling between stages, ``B×dim×H×W`` -> ``B×out_dim×H'×W'``: 1×1 conv-BN,
    GELU, 3×3 depthwise conv-BN (stride 2, or 1 into the widths
    ``STRIDE_ONE_OUT_DIMS``), GELU, 1×1 conv-BN."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.stride = 1 if out_dim in STRIDE_ONE_OUT_DIMS else 2
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, self.stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x_bchw: Tensor) -> Tensor:
        x = self.act(self.conv1(x_bchw))
        return self.conv3(self.act(self.conv2(x)))


class ConvLayer(nn.Module):
    """First TinyViT stage: ``depth`` MBConv blocks on ``B×dim×H×W``, then an optional
    PatchMerging into ``out_dim`` channels.

    Args:
        dim: channels of the blocks.
        depth: number of MBConv blocks.
        drop_path: stochastic depth rate of each block.
        out_dim: channels after the PatchMerging; ``None``: no downsampling.
        expand_ratio: MBConv hidden channels / dim.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        out_dim: int | None = None,
        expand_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(drop_path) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(drop_path)}")
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, rate) for rate in drop_path)
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def forward(self, x_bchw: Tensor, use_checkpoint: bool = False) -> Tensor:
        """``B×dim×H×W`` -> ``B×out_dim×H'×W'`` (``B×dim×H×W`` without downsampling)."""
        for block in self.blocks:
            x_bchw = checkpointed(block, x_bchw) if use_checkpoint else block(x_bchw)
        if self.downsample is not None:
            if use_checkpoint:
                return checkpointed(self.downsample, x_bchw)
            return self.downsample(x_bchw)
        return x_bchw
