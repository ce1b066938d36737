"""Helpers for model tests: official SAM builders of any size, weight randomisation and
images in the input frame."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from official_sam import import_official

#: 320-pixel input -> 20×20 tokens: windows of 7 need padding (to 21); block 1 is global.
SMALL = {
    "encoder_embed_dim": 64,
    "encoder_depth": 3,
    "encoder_num_heads": 4,
    "encoder_global_attn_indexes": (1,),
    "image_size": 320,
    "window_size": 7,
}


def build_official(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: tuple[int, ...],
    image_size: int = 1024,
    window_size: int = 14,
    patch_size: int = 16,
    prompt_embed_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
) -> torch.nn.Module:
    """The official SAM with the given sizes (as the official ``_build_sam``; the defaults of
    the patch and decoder sizes are the official ones)."""
    modeling = import_official().modeling
    grid = image_size // patch_size
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=encoder_global_attn_indexes,
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_embed_dim,
        ),
    ).eval()


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fills every parameter and persistent buffer with random values (the official init
    leaves zeros, e.g. in ``rel_pos_*`` and ``pos_embed``, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        std = 1 / math.sqrt(tensor[0].numel()) if tensor.ndim >= 2 else 0.5
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
            std = 0.5
        elif name.endswith("positional_encoding_gaussian_matrix"):
            std = 1.0
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
        if tensor.ndim == 1 and name.endswith("weight"):  # norms: keep scales around 1
            tensor.add_(1.0)
    return model


def resize_longest(image: np.ndarray, size: int) -> torch.Tensor:
    """``H×W×3`` uint8 -> ``3×h×w`` float tensor with longest side ``size`` (input frame)."""
    x = torch.as_tensor(image).permute(2, 0, 1).float()
    h, w = x.shape[1:]
    scale = size / max(h, w)
    new_hw = (round(h * scale), round(w * scale))
    return F.interpolate(x[None], new_hw, mode="bilinear", antialias=True)[0].round()
