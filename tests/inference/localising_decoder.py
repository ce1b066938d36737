"""A deterministic stand-in mask decoder that makes localised masks, for generator tests.

Random weights make SAM's masks image-wide, so box NMS, the crop-edge filter and the
thresholds would have nothing to choose between. This decoder reads each point prompt back
from its positional encoding and returns three nested discs around it, roughened by the
image embedding and a fine ripple (which make holes and islands), with quality scores
that vary over the image. Both the official and our generator drive the same instance, so
their outputs must agree; the real decoder's parity is tested separately.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Frequencies of the first two positional-encoding features: low enough that their phase
#: never wraps, so the point coordinates can be read back exactly.
PE_FREQUENCY = 0.4
RADII = (0.07, 0.13, 0.22)  # in units of the padded input side
SLOPE = 25.0


def install(model: nn.Module) -> None:
    """Makes ``model``'s positional encoding readable and replaces its mask decoder."""
    pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        pe[:, :2] = torch.tensor([[PE_FREQUENCY, 0.0], [0.0, PE_FREQUENCY]])
    positive = model.prompt_encoder.point_embeddings[1].weight.detach().clone()
    model.mask_decoder = LocalisingDecoder(positive, model.prompt_encoder.image_embedding_size)


class LocalisingDecoder(nn.Module):
    def __init__(self, positive_embedding: torch.Tensor, embedding_size: tuple[int, int]):
        super().__init__()
        self.register_buffer("positive", positive_embedding.reshape(-1))
        self.low_res = (4 * embedding_size[0], 4 * embedding_size[1])
        self.num_features = positive_embedding.numel() // 2

    def _points(self, sparse: torch.Tensor) -> torch.Tensor:
        """``P x 2`` normalised ``(x, y)`` of the first (positive) point of each prompt."""
        features = sparse[:, 0] - self.positive
        cosines = features[:, self.num_features : self.num_features + 2]
        angles = torch.atan2(features[:, :2], cosines)
        return (angles / (2 * math.pi * PE_FREQUENCY) + 1) / 2

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        points = self._points(sparse_prompt_embeddings.float())
        h, w = self.low_res
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        dx = xs[None, None, :] - points[:, 0, None, None]
        dy = ys[None, :, None] - points[:, 1, None, None]
        distance = torch.sqrt(dx**2 + dy**2)
        texture = F.interpolate(
            image_embeddings.mean(1, keepdim=True), self.low_res, mode="bilinear"
        )[:1, 0]
        texture = 4 * (texture - texture.mean()) / (texture.std() + 1e-6)
        ripple = 3 * torch.sin(xs[None, :] * 97) * torch.sin(ys[:, None] * 89)
        radii = torch.tensor(RADII)[None, :, None, None]
        masks = SLOPE * (radii - distance[:, None]) + texture + ripple
        k = torch.arange(3, dtype=torch.float32)[None, :]
        scores = 0.55 + 0.4 * torch.sin(11 * points[:, :1] + 7 * points[:, 1:] + 2 * k)
        if not multimask_output:
            return masks[:, :1], scores[:, :1]
        return masks, scores
