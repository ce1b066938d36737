"""Resizing of images and prompt coordinates to the model's input frame.

:class:`ResizeLongestSide` follows the official ``segment_anything.utils.transforms`` exactly:
``apply_image`` resizes with PIL's bilinear filter (what torchvision does for PIL images), so
features computed from its output match the official predictor bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F


class ResizeLongestSide:
    """Resizes images so that their longest side is ``target_length``, and scales coordinates
    and boxes accordingly. NumPy methods take HWC images; torch methods take BxCxHxW batches."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(H, W) after scaling the longest side of an ``oldh`` x ``oldw`` image to
        ``long_side_length``, each side rounded half up and at least 1 pixel (the official
        code rounds the short side of an image more than ``2 * long_side_length`` times
        wider than tall to 0; every other shape gives the official size)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))

    def _target_shape(self, original_size: tuple[int, ...]) -> tuple[int, int]:
        return self.get_preprocess_shape(original_size[0], original_size[1], self.target_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resizes a uint8 HxWxC (or HxW) image with PIL bilinear filtering."""
        new_h, new_w = self._target_shape(image.shape[:2])
        return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scales float64 copies of (..., 2) XY ``coords`` from an image of ``original_size``
        (H, W) to the resized frame."""
        old_h, old_w = original_size[0], original_size[1]
        new_h, new_w = self._target_shape(original_size)
        coords = np.array(coords, dtype=float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scales XYXY ``boxes`` (reshaped to Bx4) like :meth:`apply_coords`."""
        return self.apply_coords(np.reshape(boxes, (-1, 2, 2)), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resizes float BxCxHxW images with antialiased bilinear interpolation. May differ
        slightly from :meth:`apply_image`, which is what the model expects.

        The official version computes the target size from ``image.shape[0:2]`` (batch and
        channels); this one uses the spatial size, as documented there."""
        target_size = self._target_shape(tuple(image.shape[-2:]))
        return F.interpolate(
            image, target_size, mode="bilinear", align_corners=False, antialias=True
        )

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Scales float32 copies of (..., 2) XY ``coords`` like :meth:`apply_coords`."""
        old_h, old_w = original_size[0], original_size[1]
        new_h, new_w = self._target_shape(original_size)
        coords = coords.to(torch.float, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Scales XYXY ``boxes`` (reshaped to Bx4) like :meth:`apply_coords_torch`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
