"""Weights trained at one input size loaded into a model of another (e.g. the official
1024-pixel checkpoints into a 512-pixel model), as SAMed's ``load_from`` does
(hitachinsk/SAMed, ``segment_anything/build_sam.py``).

Two kinds of weights depend on the token grid ``G = image_size / patch_size``: the absolute
position embedding ``image_encoder.pos_embed`` (``1×G×G×C``) and the relative-position
tables ``rel_pos_h``/``rel_pos_w`` (``(2G-1)×head_dim``) of the global-attention blocks.
The windowed blocks' tables (``(2·window-1)×head_dim``) do not depend on the input size and
are left alone. Plain torch: nothing here knows of Lightning or Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_lightning.modeling.image_encoder import ImageEncoderViT

log = logging.getLogger(__name__)

#: Key of the absolute position embedding in a SAM state dict.
POS_EMBED_KEY = "image_encoder.pos_embed"


def checkpoint_image_size(
    state_dict: Mapping[str, Tensor], patch_size: int, key: str = POS_EMBED_KEY
) -> int | None:
    """The input side the weights were made for, ``G * patch_size`` for a ``1×G×G×C``
    position embedding under ``key``; None when there is none or it is not of that form."""
    pos_embed = state_dict.get(key)
    if not isinstance(pos_embed, Tensor) or pos_embed.ndim != 4:
        return None
    batch, height, width, _ = pos_embed.shape
    if batch != 1 or height != width or height == 0:
        return None
    return int(height) * patch_size


def resize_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """``1×G×G×C`` absolute position embedding -> ``1×grid×grid×C``, bilinearly
    (``align_corners=False``).

    ViTDet and timm resize absolute embeddings bicubically; we follow SAMed, the reference
    named by our issue (bilinear), so that weights adapted here equal SAMed's.
    """
    resized = F.interpolate(
        _float(pos_embed).permute(0, 3, 1, 2),
        (grid, grid),
        mode="bilinear",
        align_corners=False,
    )
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """``L×C`` relative-position table -> ``length×C`` by linear interpolation along ``L``
    (``align_corners=False``, each channel on its own): what
    :func:`~sam_lightning.modeling.image_encoder.get_rel_pos` does at run time to a table
    of another length, and SAMed's bilinear resize of the ``L×C`` table to ``length×C``
    (the same interpolation up to float rounding: the channel axis keeps its size)."""
    resized = F.interpolate(_float(table).T[None], size=length, mode="linear", align_corners=False)
    return resized[0].T.to(table.dtype).contiguous()


def adapt_to_model(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    source: str | PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """``state_dict`` with the size-dependent weights of every image encoder of ``model``
    interpolated to the model's input size (see the module docstring); the hook that
    :func:`~sam_lightning.modeling.checkpoint.load_checkpoint` takes as ``adapt``.

    An encoder's weights are interpolated only where the checkpoint's ``pos_embed`` is a
    square ``1×G×G×C`` of the model's width ``C`` and ``G`` differs from the model's grid;
    then ``pos_embed`` and the ``rel_pos_h``/``rel_pos_w`` tables of the model's
    global-attention blocks (window size 0) that hold ``2G-1`` rows of the model's width
    are resized. Anything else (equal sizes, no or a non-square ``pos_embed``, other widths,
    a windowed table of another length) is returned untouched, for the key and shape check
    of ``load_checkpoint`` to report. One info line names ``source`` (the checkpoint file)
    and both sizes when weights are interpolated.

    Returns:
        A new dict holding the tensors of ``state_dict`` (the same objects) except the
        interpolated ones.
    """
    adapted = dict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, ImageEncoderViT):
            _adapt_encoder(adapted, module, f"{name}." if name else "", source)
    return adapted


def _adapt_encoder(
    state_dict: dict[str, Tensor],
    encoder: ImageEncoderViT,
    prefix: str,
    source: str | PathLike[str] | None,
) -> None:
    """Interpolates, in place, the entries of ``state_dict`` of ``encoder`` (keys under
    ``prefix``) that depend on the input size, where the checkpoint's grid differs."""
    if encoder.pos_embed is None:
        return
    key = f"{prefix}pos_embed"
    patch_size = encoder.patch_embed.proj.kernel_size[0]
    source_size = checkpoint_image_size(state_dict, patch_size, key)
    grid, width = encoder.pos_embed.shape[1], encoder.pos_embed.shape[3]
    target_size = grid * patch_size
    if source_size is None or source_size == target_size or state_dict[key].shape[3] != width:
        return
    source_grid = source_size // patch_size
    state_dict[key] = resize_pos_embed(state_dict[key], grid)
    resized = []
    for i, block in enumerate(encoder.blocks):
        if block.window_size != 0 or not block.attn.use_rel_pos:
            continue
        for axis in ("h", "w"):
            table_key = f"{prefix}blocks.{i}.attn.rel_pos_{axis}"
            table, target = state_dict.get(table_key), getattr(block.attn, f"rel_pos_{axis}")
            if (
                isinstance(table, Tensor)
                and table.shape == (2 * source_grid - 1, target.shape[1])
                and target.shape[0] == 2 * grid - 1
            ):
                state_dict[table_key] = resize_rel_pos(table, target.shape[0])
                resized.append(i)
    blocks = ", ".join(str(i) for i in sorted(set(resized))) or "none"
    log.warning(
        "%s holds weights for %d px inputs: interpolated to image_size=%d (%spos_embed "
        "%d×%d -> %d×%d bilinearly; rel-pos tables of the global-attention blocks %s: "
        "%d -> %d rows linearly)",
        source if source is not None else "the state dict",
        source_size,
        target_size,
        prefix,
        source_grid,
        source_grid,
        grid,
        grid,
        blocks,
        2 * source_grid - 1,
        2 * grid - 1,
    )


def _float(tensor: Tensor) -> Tensor:
    """``tensor`` itself in float32 or float64, else as float32 (half-precision weights are
    interpolated in float32 and cast back)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
