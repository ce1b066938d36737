"""Prompt encoder of SAM: points, boxes (and optionally CLIP text/image embeddings) -> sparse
tokens, masks -> dense embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_lightning.modeling.common import LayerNorm2d

#: Point labels: ``NOT_A_POINT`` marks padding, ``NEGATIVE``/``POSITIVE`` are clicks.
NOT_A_POINT, NEGATIVE, POSITIVE = -1, 0, 1


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature position encoding of ``[0, 1]²`` coordinates.

    Args:
        num_pos_feats: number of frequencies; encodings have ``2*num_pos_feats`` channels.
        scale: standard deviation of the random frequencies (``None`` or <= 0: 1.0).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords_01: Tensor) -> Tensor:
        """``...×2`` ``(x, y)`` coordinates in ``[0, 1]`` -> ``...×(2*num_pos_feats)``."""
        proj = (2 * coords_01 - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Encoding of the pixel centres of an ``h×w`` grid, ``C×h×w``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=matrix.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords_bn2: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Encodes ``B×N×2`` pixel ``(x, y)`` coordinates of an ``(H, W)`` image, ``B×N×C``."""
        h, w = image_size
        coords = coords_bn2 / coords_bn2.new_tensor([w, h])
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Args:
        embed_dim: prompt embedding channels.
        image_embedding_size: ``(h, w)`` of the image embedding.
        input_image_size: ``(H, W)`` of the padded encoder input; point and box coordinates
            are pixels of this frame.
        mask_in_chans: hidden channels of the mask downscaling network.
        activation: activation class of the mask downscaling network.
        text_embed_dim: width of CLIP embeddings taken as a prompt (App. D.5: text at
            inference, the mask region's image embedding in training); each is
            ℓ2-normalised and projected linearly to one sparse token. None (the official
            models): no text prompt and no extra weights.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        text_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.text_embed_dim = text_embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # negative point, positive point, box top-left corner, box bottom-right corner
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        if text_embed_dim is not None:
            self.text_projection = nn.Linear(text_embed_dim, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Position encoding of the image embedding grid, ``1×embed_dim×h×w``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points_bn2: Tensor, labels_bn: Tensor, pad: bool) -> Tensor:
        """``B×N×2`` points with ``B×N`` labels -> ``B×N×C`` (``B×(N+1)×C`` with ``pad``:
        a not-a-point token is appended, as when no box follows the points)."""
        points_bn2 = points_bn2 + 0.5  # pixel centres
        if pad:
            b = points_bn2.shape[0]
            points_bn2 = torch.cat([points_bn2, points_bn2.new_zeros(b, 1, 2)], dim=1)
            labels_bn = torch.cat([labels_bn, labels_bn.new_full((b, 1), NOT_A_POINT)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points_bn2, self.input_image_size)
        labels = labels_bn[..., None]
        is_padding = labels == NOT_A_POINT
        embedding = torch.where(is_padding, 0.0, embedding)
        embedding = embedding + is_padding * self.not_a_point_embed.weight
        embedding = embedding + (labels == NEGATIVE) * self.point_embeddings[0].weight
        return embedding + (labels == POSITIVE) * self.point_embeddings[1].weight

    def _embed_boxes(self, boxes_b4: Tensor) -> Tensor:
        """``B×4`` boxes ``(x0, y0, x1, y1)`` -> ``B×2×C`` corner tokens."""
        corners = (boxes_b4 + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return embedding + corner_embed

    def _embed_text(self, text_bd: Tensor) -> Tensor:
        """``B×D`` CLIP embeddings -> ``B×1×C`` tokens (ℓ2-normalised, then projected)."""
        if self.text_embed_dim is None:
            raise ValueError(
                "this prompt encoder takes no text prompts: build the model with "
                "text_embed_dim=<CLIP embedding width>"
            )
        if text_bd.ndim != 2 or text_bd.shape[1] != self.text_embed_dim:
            raise ValueError(
                f"expected B×{self.text_embed_dim} CLIP embeddings, got {tuple(text_bd.shape)}"
            )
        weight = self.text_projection.weight
        normalised = F.normalize(text_bd.to(weight.dtype), dim=-1)
        return self.text_projection(normalised)[:, None]

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        text: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embeds a batch of B prompts.

        Args:
            points: ``(coords B×N×2, labels B×N)``; labels 1 positive, 0 negative,
                -1 padding (not a point). Coordinates in the input frame.
            boxes: ``B×4`` boxes ``(x0, y0, x1, y1)`` in the input frame.
            masks: ``B×1×4h×4w`` mask logits.
            text: ``B×text_embed_dim`` CLIP embeddings (text or image), one token each,
                placed before the point and box tokens.

        Returns:
            Sparse embeddings ``B×N'×embed_dim`` (N' = 1 with text + points (+1 padding
            token when there is no box) + 2 per box; 0 without text, points and boxes) and
            dense embeddings ``B×embed_dim×h×w``. B is 1 when no prompt is given.
        """
        bs = _batch_size(points, boxes, masks, text)
        weight = self.point_embeddings[0].weight
        tokens = [weight.new_empty((bs, 0, self.embed_dim))]
        if text is not None:
            tokens.append(self._embed_text(text))
        if points is not None:
            tokens.append(self._embed_points(*points, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                bs, -1, *self.image_embedding_size
            )
        return sparse, dense


def _batch_size(
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    masks: Tensor | None,
    text: Tensor | None = None,
) -> int:
    """Number of prompts: the batch of the first prompt given, 1 if none."""
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    if text is not None:
        return text.shape[0]
    return 1
