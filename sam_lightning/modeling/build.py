"""Constructors of SAM models: the official ViT-B/L/H configurations, MobileSAM's TinyViT
(``vit_t``), tiny ones for tests and demos, and arbitrary custom sizes. The image encoder
is a choice: :func:`assemble_sam` puts the official prompt encoder and mask decoder around
any encoder."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import partial
from os import PathLike

from torch import nn

from sam_lightning.modeling.checkpoint import load_checkpoint
from sam_lightning.modeling.image_encoder import ImageEncoderViT
from sam_lightning.modeling.image_size import adapt_to_model
from sam_lightning.modeling.mask_decoder import MaskDecoder
from sam_lightning.modeling.prompt_encoder import PromptEncoder
from sam_lightning.modeling.sam import Sam
from sam_lightning.modeling.tiny_vit import TinyViT
from sam_lightning.modeling.transformer import TwoWayTransformer

PROMPT_EMBED_DIM = 256
PATCH_SIZE = 16
#: The only input side of MobileSAM's TinyViT (``vit_t``).
TINY_VIT_IMAGE_SIZE = 1024
#: Key prefix of the text prompt's projection (absent from the official checkpoints).
TEXT_PROJECTION = "prompt_encoder.text_projection."


def build_sam_custom(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: Sequence[int],
    image_size: int = 1024,
    window_size: int = 14,
    checkpoint: str | PathLike[str] | None = None,
    *,
    patch_size: int = PATCH_SIZE,
    prompt_embed_dim: int = PROMPT_EMBED_DIM,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    drop_path_rate: float = 0.0,
    activation_checkpointing: bool = False,
    text_embed_dim: int | None = None,
) -> Sam:
    """Builds a SAM of the given sizes (by default the decoder and prompt encoder of the
    official models), in eval mode, optionally loading ``checkpoint`` strictly.

    Args:
        encoder_embed_dim, encoder_depth, encoder_num_heads: ViT width, depth and heads.
        encoder_global_attn_indexes: blocks with global attention (others are windowed).
        image_size: side of the square encoder input, any multiple of ``patch_size`` (e.g.
            512 or 768); a checkpoint made for another size (the official ones: 1024) has
            its position embedding and global-attention rel-pos tables interpolated, see
            :func:`~sam_lightning.modeling.image_size.adapt_to_model`.
        window_size: window side (in tokens) of the windowed blocks.
        checkpoint: state-dict file, see :func:`~sam_lightning.modeling.checkpoint.load_checkpoint`.
        patch_size: side of the encoder's patches (official: 16); the image embedding is
            ``image_size / patch_size`` tokens wide and the low-resolution masks 4 times that.
        prompt_embed_dim: channels of the image embedding, the prompt tokens and the mask
            decoder (official: 256).
        decoder_mlp_dim, decoder_num_heads: MLP width and attention heads of the decoder's
            two-way transformer (official: 2048 and 8).
        drop_path_rate: stochastic depth rate of the last encoder block (linear from 0 over
            the blocks; training mode only; adds no weights).
        activation_checkpointing: recompute the encoder blocks in the backward pass
            (training mode only); toggle later with
            ``model.image_encoder.activation_checkpointing``.
        text_embed_dim: CLIP embedding width of a text prompt (App. D.5; 768 for CLIP
            ViT-L/14), see :class:`~sam_lightning.modeling.prompt_encoder.PromptEncoder`;
            the checkpoint need not hold its projection (an official checkpoint starts a
            text model with a freshly initialised one).
    """
    if image_size % patch_size:
        raise ValueError(f"image_size must be a multiple of {patch_size}, got {image_size}")
    image_encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=encoder_embed_dim,
        depth=encoder_depth,
        num_heads=encoder_num_heads,
        mlp_ratio=4.0,
        out_chans=prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=tuple(encoder_global_attn_indexes),
        drop_path_rate=drop_path_rate,
        activation_checkpointing=activation_checkpointing,
    )
    return assemble_sam(
        image_encoder,
        image_size // patch_size,
        checkpoint,
        prompt_embed_dim=prompt_embed_dim,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_num_heads=decoder_num_heads,
        text_embed_dim=text_embed_dim,
    )


def assemble_sam(
    image_encoder: nn.Module,
    embedding_size: int,
    checkpoint: str | PathLike[str] | None = None,
    *,
    prompt_embed_dim: int = PROMPT_EMBED_DIM,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    text_embed_dim: int | None = None,
) -> Sam:
    """SAM around any image encoder (``B×3×S×S`` -> ``B×prompt_embed_dim×G×G`` with
    ``G = embedding_size``, and an ``img_size`` attribute ``S``): the official prompt
    encoder and mask decoder (sizes as in :func:`build_sam_custom`), in eval mode,
    optionally loading ``checkpoint`` strictly."""
    image_size = int(image_encoder.img_size)
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
            text_embed_dim=text_embed_dim,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_embed_dim,
        ),
    )
    sam.eval()
    if checkpoint is not None:
        result = load_checkpoint(
            sam, checkpoint, strict=True, may_be_missing=[TEXT_PROJECTION], adapt=adapt_to_model
        )
        sam.missing_from_checkpoint = tuple(result.missing_keys)
        if any(key.startswith(TEXT_PROJECTION) for key in result.missing_keys):
            warnings.warn(
                f"{checkpoint} has no text projection ({TEXT_PROJECTION}*): it is freshly "
                "initialised, so text prompts mean nothing until trained (training.text)",
                stacklevel=3,
            )
        sam.eval()  # again: an encoder may cache tables derived from its weights in eval()
    return sam


def build_sam_vit_t(
    checkpoint: str | PathLike[str] | None = None,
    image_size: int = 1024,
    *,
    drop_path_rate: float = 0.0,
    activation_checkpointing: bool = False,
    text_embed_dim: int | None = None,
) -> Sam:
    """MobileSAM (``vit_t``): the TinyViT-5M image encoder with the official prompt
    encoder and mask decoder; ``mobile_sam.pt`` loads strictly. TinyViT as released works
    at ``image_size`` 1024 only (ValueError otherwise)."""
    if image_size != TINY_VIT_IMAGE_SIZE:
        raise ValueError(
            f"model type 'vit_t' (MobileSAM's TinyViT) works at image_size "
            f"{TINY_VIT_IMAGE_SIZE} only, got {image_size}: its forward reshapes to a 64×64 "
            "grid and its patch merging strides depend on the widths; use model.image_size="
            f"{TINY_VIT_IMAGE_SIZE}"
        )
    image_encoder = TinyViT(
        img_size=image_size,
        drop_path_rate=drop_path_rate,
        activation_checkpointing=activation_checkpointing,
    )
    return assemble_sam(
        image_encoder,
        image_size // PATCH_SIZE,
        checkpoint,
        text_embed_dim=text_embed_dim,
    )


def _registry_entry(
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: Sequence[int],
    **sizes: int,
) -> Callable[..., Sam]:
    """A constructor of one architecture; ``sizes`` are :func:`build_sam_custom`'s
    keyword-only sizes (patch and decoder) where they differ from the official ones."""

    def build(
        checkpoint: str | PathLike[str] | None = None,
        image_size: int = 1024,
        *,
        drop_path_rate: float = 0.0,
        activation_checkpointing: bool = False,
        text_embed_dim: int | None = None,
    ) -> Sam:
        return build_sam_custom(
            embed_dim,
            depth,
            num_heads,
            global_attn_indexes,
            image_size,
            checkpoint=checkpoint,
            drop_path_rate=drop_path_rate,
            activation_checkpointing=activation_checkpointing,
            text_embed_dim=text_embed_dim,
            **sizes,
        )

    return build


#: Model constructors by name, called as ``sam_model_registry[name](checkpoint=None,
#: image_size=1024, *, drop_path_rate=0.0, activation_checkpointing=False,
#: text_embed_dim=None)``.
#: ``vit_t`` is MobileSAM's TinyViT encoder (:func:`build_sam_vit_t`).
#: ``vit_tiny`` and ``vit_nano`` are not official models (no official weights exist):
#: ``vit_tiny`` is a small encoder with the official decoder, for CPU tests against the
#: official modules; ``vit_nano`` has the same encoder on 8-pixel patches and a decoder half
#: as wide (128 channels, 4 heads of the official 32 channels, MLP 512), so that it learns
#: from scratch on a CPU in minutes (the demo: with the official 256-wide decoder and
#: 16-pixel patches the same budget is not enough to leave the "one blob for every prompt"
#: start). ``vit_pico`` is ``vit_nano`` with a 64-wide, 2-block encoder (0.28M of the encoder
#: parameters against 1.0M, the same 8×8 embedding at 64 px): the student of the distillation demo.
sam_model_registry: dict[str, Callable[..., Sam]] = {
    "vit_b": _registry_entry(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _registry_entry(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _registry_entry(1280, 32, 16, (7, 15, 23, 31)),
    "vit_t": build_sam_vit_t,
    "vit_tiny": _registry_entry(128, 4, 4, (1, 3)),
    "vit_nano": _registry_entry(
        128,
        4,
        4,
        (1, 3),
        patch_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
    ),
    "vit_pico": _registry_entry(
        64,
        2,
        2,
        (1,),
        patch_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
    ),
}


def build_sam(
    model_type: str,
    checkpoint: str | PathLike[str] | None = None,
    image_size: int = 1024,
    *,
    drop_path_rate: float = 0.0,
    activation_checkpointing: bool = False,
    text_embed_dim: int | None = None,
) -> Sam:
    """Builds a registered model (``vit_b``, ``vit_l``, ``vit_h``, ``vit_t``, ``vit_tiny``,
    ``vit_nano``, ``vit_pico``) in eval mode, optionally loading ``checkpoint`` (official
    ``.pth``, our training checkpoints, ``.safetensors``) strictly. ``image_size`` is any multiple
    of the patch size; weights made for another size (the official ones: 1024) are interpolated,
    see :func:`build_sam_custom`. ``drop_path_rate`` and ``activation_checkpointing`` are
    training features of the image encoder, see :func:`build_sam_custom`;
    ``text_embed_dim`` adds a CLIP text prompt (App. D.5)."""
    if model_type not in sam_model_registry:
        raise ValueError(
            f"unknown model type {model_type!r}; choose one of {sorted(sam_model_registry)}"
        )
    return sam_model_registry[model_type](
        checkpoint=checkpoint,
        image_size=image_size,
        drop_path_rate=drop_path_rate,
        activation_checkpointing=activation_checkpointing,
        text_embed_dim=text_embed_dim,
    )
