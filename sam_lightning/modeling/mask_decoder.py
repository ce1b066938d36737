"""Mask decoder of SAM: IoU token + mask tokens, two-way transformer, hypernetwork heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sam_lightning.modeling.common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    """Predicts ``1 + num_multimask_outputs`` masks and their IoU per prompt.

    Args:
        transformer_dim: channels of the transformer (and the image embedding).
        transformer: module ``(image B×C×h×w, pe, tokens B×N×C) -> (tokens, image tokens)``.
        num_multimask_outputs: masks predicted in multimask mode.
        activation: activation class of the upscaling network.
        iou_head_depth: layers of the IoU prediction MLP.
        iou_head_hidden_dim: hidden channels of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predicts masks for P prompts.

        Args:
            image_embeddings: ``B×C×h×w`` image embeddings.
            image_pe: ``1×C×h×w`` position encoding of the embedding grid.
            sparse_prompt_embeddings: ``P×N×C`` point/box tokens.
            dense_prompt_embeddings: ``P×C×h×w`` (or ``1×C×h×w``) mask embeddings.
            multimask_output: return the ``num_multimask_outputs`` ambiguity masks instead
                of the single-mask output.
            image_index: ``P`` indexes of each prompt's image embedding. Default: B == 1
                shares the embedding among all prompts, B == P pairs them one-to-one.

        Returns:
            Low-resolution mask logits ``P×K×4h×4w`` and IoU predictions ``P×K``,
            ``K = num_multimask_outputs`` or 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            image_index=image_index,
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All ``num_mask_tokens`` masks ``P×M×4h×4w`` and IoUs ``P×M``; see :meth:`forward`."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if _is_shared(image_embeddings, image_index) and _is_shared(dense_prompt_embeddings):
            # Every prompt sees the same image tokens: the transformer's first block then
            # projects them once for all prompts instead of once per prompt.
            src = image_embeddings[:1] + dense_prompt_embeddings[:1]
        else:
            src = gather_image_embeddings(image_embeddings, num_prompts, image_index)
            src = src + dense_prompt_embeddings
        _, c, h, w = src.shape

        hs, src_tokens = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src_tokens = src_tokens.expand(num_prompts, -1, -1)
        upscaled = self.output_upscaling(src_tokens.transpose(1, 2).reshape(num_prompts, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def _is_shared(embeddings: Tensor, image_index: Tensor | None = None) -> bool:
    """Whether every prompt uses the same ``C×h×w`` embedding: a batch of one (or a batch
    broadcast from one) without an ``image_index`` that could pick another."""
    one = embeddings.shape[0] == 1 or embeddings.stride(0) == 0
    return one and image_index is None


def gather_image_embeddings(
    image_embeddings: Tensor, num_prompts: int, image_index: Tensor | None
) -> Tensor:
    """Image embedding of each prompt, ``P×C×h×w``.

    Args:
        image_embeddings: ``B×C×h×w``.
        num_prompts: P.
        image_index: ``P`` indexes into the B embeddings; ``None``: B == 1 is shared by all
            prompts, B == P pairs them one-to-one, other B raise ``ValueError``.
    """
    num_images = image_embeddings.shape[0]
    if image_index is not None:
        if image_index.ndim != 1 or image_index.shape[0] != num_prompts:
            raise ValueError(
                f"image_index must have shape ({num_prompts},), got {tuple(image_index.shape)}"
            )
        return image_embeddings[image_index.to(image_embeddings.device, torch.long)]
    if num_images == 1:
        return image_embeddings.expand(num_prompts, -1, -1, -1)
    if num_images == num_prompts:
        return image_embeddings
    raise ValueError(
        f"{num_images} image embeddings and {num_prompts} prompts: pass image_index to map "
        "each prompt to its image (the default needs 1 embedding or one per prompt)"
    )
