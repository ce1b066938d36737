"""Test-only stand-in for torchvision.ops."""

from .boxes import batched_nms, box_area, nms

__all__ = ["batched_nms", "box_area", "nms"]
