"""The automatic generator's masks of one image with their per-mask values
(:class:`MaskCandidates`), before they become records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sam_lightning.inference.packed_rles import PackedRLEs

_TENSOR_FIELDS = ("boxes", "iou_preds", "points", "stability_score", "crop_boxes")


@dataclass
class MaskCandidates:
    """Masks of one image with their per-mask values, all in the original image frame.

    ``boxes`` and ``crop_boxes`` are XYXY int64, ``points`` the float64 prompt of each mask.
    """

    rles: PackedRLEs
    boxes: torch.Tensor
    iou_preds: torch.Tensor
    points: torch.Tensor
    stability_score: torch.Tensor
    crop_boxes: torch.Tensor

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, index: torch.Tensor) -> MaskCandidates:
        """The masks at ``index`` (int64 positions or a bool mask), in that order."""
        index = torch.as_tensor(index).cpu()
        fields = {name: getattr(self, name)[index] for name in _TENSOR_FIELDS}
        return MaskCandidates(rles=self.rles.select(index), **fields)

    @staticmethod
    def cat(parts: Sequence[MaskCandidates], height: int, width: int) -> MaskCandidates:
        if not parts:
            return MaskCandidates.empty(height, width)
        fields = {name: torch.cat([getattr(p, name) for p in parts]) for name in _TENSOR_FIELDS}
        return MaskCandidates(rles=PackedRLEs.cat([p.rles for p in parts], height, width), **fields)

    @staticmethod
    def empty(height: int, width: int) -> MaskCandidates:
        return MaskCandidates(
            rles=PackedRLEs.empty(height, width),
            boxes=torch.zeros(0, 4, dtype=torch.int64),
            iou_preds=torch.zeros(0),
            points=torch.zeros(0, 2, dtype=torch.float64),
            stability_score=torch.zeros(0),
            crop_boxes=torch.zeros(0, 4, dtype=torch.int64),
        )
