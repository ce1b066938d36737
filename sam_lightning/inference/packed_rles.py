"""Many COCO RLEs of one image size, kept packed as the RLE kernels produce them.

The automatic mask generator filters, concatenates and re-orders thousands of RLEs per
image. Keeping them as one ``uint8`` buffer of counts strings plus ``int64`` offsets makes
every such step a handful of tensor operations instead of a Python loop over masks (the
official generator deep-copies a list of RLE dicts at every concatenation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sam_lightning.ops import rle as rle_ops


@dataclass(frozen=True)
class PackedRLEs:
    """``len(self)`` RLEs of size ``height x width``: string ``i`` is
    ``chars[offsets[i]:offsets[i + 1]]`` (pycocotools' compressed counts)."""

    chars: torch.Tensor
    offsets: torch.Tensor
    height: int
    width: int

    @classmethod
    def empty(cls, height: int, width: int) -> PackedRLEs:
        return cls(
            torch.empty(0, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), height, width
        )

    @classmethod
    def encode(cls, masks: torch.Tensor) -> PackedRLEs:
        """Encodes ``N x H x W`` bool/uint8 masks (any strides, any device)."""
        if masks.dim() != 3:
            raise ValueError(f"masks must be N x H x W, got shape {list(masks.shape)}")
        chars, offsets = rle_ops._KERNELS.rle_encode(masks.cpu())
        return cls(chars, offsets, int(masks.shape[1]), int(masks.shape[2]))

    @classmethod
    def cat(cls, batches: Sequence[PackedRLEs], height: int, width: int) -> PackedRLEs:
        """Concatenates batches of RLEs of size ``height x width``, in order."""
        batches = [b for b in batches if len(b)]
        for batch in batches:
            if (batch.height, batch.width) != (height, width):
                raise ValueError(
                    f"cannot concatenate RLEs of size {batch.height}x{batch.width} with "
                    f"{height}x{width}"
                )
        if not batches:
            return cls.empty(height, width)
        starts = torch.tensor([0] + [int(b.offsets[-1]) for b in batches]).cumsum(0)
        offsets = [batches[0].offsets[:1]]
        offsets += [b.offsets[1:] + start for b, start in zip(batches, starts.tolist())]
        return cls(torch.cat([b.chars for b in batches]), torch.cat(offsets), height, width)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def sizes(self) -> torch.Tensor:
        """``N x 2`` int64 ``[height, width]`` of each RLE, as the kernels take them."""
        return torch.tensor([[self.height, self.width]], dtype=torch.int64).expand(len(self), 2)

    def select(self, index: torch.Tensor) -> PackedRLEs:
        """The RLEs at ``index`` (int64 positions or a bool mask), in that order."""
        index = torch.as_tensor(index).cpu()
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        chars, offsets = rle_ops._KERNELS.rle_select(self.chars, self.offsets, index.long())
        return PackedRLEs(chars, offsets, self.height, self.width)

    def replace(self, index: torch.Tensor, new: PackedRLEs) -> PackedRLEs:
        """A copy where RLE ``index[j]`` is ``new``'s RLE ``j``."""
        index = torch.as_tensor(index, dtype=torch.int64).cpu()
        if len(index) != len(new):
            raise ValueError(f"{len(index)} positions but {len(new)} replacement RLEs")
        order = torch.arange(len(self))
        order[index] = len(self) + torch.arange(len(new))
        return PackedRLEs.cat([self, new], self.height, self.width).select(order)

    def areas(self) -> torch.Tensor:
        """Foreground pixel count of each RLE (int64)."""
        return rle_ops._KERNELS.rle_area(self.chars, self.offsets, self.sizes)

    def decode(self) -> torch.Tensor:
        """``N x H x W`` uint8 0/1 masks."""
        return rle_ops._KERNELS.rle_decode(self.chars, self.offsets, self.height, self.width)

    def counts_strings(self) -> list[str]:
        """The counts strings as ``str``, the form COCO json files store."""
        text = self.chars.numpy().tobytes().decode("ascii")
        bounds = self.offsets.tolist()
        return [text[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    def uncompressed_counts(self) -> list[list[int]]:
        """Run lengths of each RLE (column-major, starting with background)."""
        counts, offsets = rle_ops._KERNELS.rle_decompress(self.chars, self.offsets)
        return [part.tolist() for part in np.split(counts.numpy(), offsets[1:-1].numpy())]
