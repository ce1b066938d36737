"""CLIP image embeddings of masks as training prompts for text-to-mask (paper App. D.5).

SAM learns text prompts from CLIP *image* embeddings: each mask's region is cropped with a
random margin and embedded by CLIP, with the last layer's attention restricted to the mask
(:meth:`~sam_lightning.modeling.text_encoder.ClipEncoder.encode_image`); at inference a
CLIP text embedding takes its place.

Boxes follow :func:`~sam_lightning.training.prompts.mask_boxes`: pixel ``x`` spans
``[x, x + 1)``, so a tight box of columns ``x0..x1`` is ``x1 - x0 + 1`` wide. Random numbers
come from ``generator`` (on any device), so a seeded generator makes the crops reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sam_lightning.settings.schema import defaults
from sam_lightning.settings.train import TextSettings
from sam_lightning.training.prompts import mask_boxes

if TYPE_CHECKING:
    from sam_lightning.modeling.text_encoder import ClipEncoder

#: Settings of ``training.text`` (App. D.5) and their defaults; ``clip_path`` or
#: ``clip_tiny`` is needed.
TEXT_DEFAULTS: dict[str, Any] = defaults(TextSettings)


def _check_inputs(
    images: Tensor,
    image_index: Tensor,
    masks: Tensor,
    expand_range: tuple[float, float],
    zero_outside_probability: float,
) -> None:
    """Raise ``ValueError`` for inputs :func:`mask_crops` cannot use."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be float B×3×H×W, got {images.dtype} {images.shape}")
    if masks.ndim != 3 or masks.dtype != torch.bool or masks.shape[1:] != images.shape[2:]:
        raise ValueError(
            f"masks must be boolean P×{images.shape[2]}×{images.shape[3]}, "
            f"got {masks.dtype} {tuple(masks.shape)}"
        )
    if image_index.shape != masks.shape[:1]:
        raise ValueError(f"image_index must have one entry per mask, got {image_index.shape}")
    if len(image_index) and not 0 <= image_index.min() <= image_index.max() < len(images):
        raise ValueError(f"image_index must lie in [0, {len(images)}), got {image_index}")
    empty = (~masks.flatten(1).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"masks {empty} are empty")
    low, high = expand_range
    if not 1.0 <= low <= high:
        raise ValueError(f"expand_range must satisfy 1 <= low <= high, got {expand_range}")
    if not 0.0 <= zero_outside_probability <= 1.0:
        raise ValueError(
            f"zero_outside_probability must be in [0, 1], got {zero_outside_probability}"
        )


def _pixels_hit(masks: Tensor, left: Tensor, top: Tensor, side: Tensor, size: int) -> Tensor:
    """``P×size×size`` boolean: the crop pixels that contain the centre of a mask pixel."""
    mask, y, x = masks.nonzero().unbind(dim=1)
    scale = size / side[mask]
    column = ((x + 0.5 - left[mask]) * scale).floor().long().clamp(0, size - 1)
    row = ((y + 0.5 - top[mask]) * scale).floor().long().clamp(0, size - 1)
    hit = torch.zeros(len(masks), size, size, dtype=torch.bool, device=masks.device)
    hit[mask, row, column] = True
    return hit


def mask_crops(
    images: Tensor,
    image_index: Tensor,
    masks: Tensor,
    size: int,
    generator: torch.Generator | None = None,
    expand_range: tuple[float, float] = (1.0, 2.0),
    zero_outside_probability: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Square crops around P masks, resized to ``size×size`` (App. D.5).

    Args:
        images: ``B×3×H×W`` float RGB images (0-255).
        image_index: ``P`` long, the image of each mask.
        masks: ``P×H×W`` boolean masks, none empty.
        size: side of the crops in pixels (CLIP's input size).
        generator: source of the random expansion factors and zeroing choices.
        expand_range: the tight box of each mask is expanded about its centre by a factor
            drawn uniformly from this range (at least 1, so that the crop holds the whole
            mask) and made square: its side is ``factor × max(box width, box height)``.
        zero_outside_probability: chance that a crop's pixels outside its mask become 0.

    Returns:
        ``P×3×size×size`` crops and their ``P×size×size`` boolean masks. Crops are sampled
        bilinearly without antialiasing (one ``grid_sample`` per image); parts outside the
        image are 0. A crop pixel is in the crop mask when the bilinearly resampled mask is
        at least 0.5 there; a mask too thin to reach 0.5 anywhere keeps the crop pixels that
        contain any of its pixel centres, so no crop mask is empty.
        ``expand_range=(f, f)`` with ``zero_outside_probability`` 0 or 1 is deterministic.
    """
    _check_inputs(images, image_index, masks, expand_range, zero_outside_probability)
    device, count = images.device, len(masks)
    if count == 0:
        return images.new_zeros(0, 3, size, size), masks.new_zeros(0, size, size)
    source = generator.device if generator is not None else device
    draws = torch.rand(2, count, generator=generator, device=source).to(device)
    low, high = expand_range
    factor = low + (high - low) * draws[0]
    zero_outside = draws[1] < zero_outside_probability

    x0, y0, x1, y1 = mask_boxes(masks).to(device).unbind(dim=1)
    side = factor * torch.maximum(x1 - x0 + 1, y1 - y0 + 1)
    left = (x0 + x1 + 1) / 2 - side / 2
    top = (y0 + y1 + 1) / 2 - side / 2
    # Crop pixel j is centred at left + (j + 0.5) * side / size; with align_corners=False,
    # grid_sample's normalised coordinate of the continuous position u is 2u / W - 1.
    steps = (torch.arange(size, device=device) + 0.5) / size
    height, width = images.shape[2:]
    grid_x = 2 * (left[:, None] + steps * side[:, None]) / width - 1
    grid_y = 2 * (top[:, None] + steps * side[:, None]) / height - 1
    grid = torch.stack(
        [grid_x[:, None, :].expand(-1, size, -1), grid_y[:, :, None].expand(-1, -1, size)],
        dim=-1,
    ).to(images.dtype)

    crops = images.new_zeros(count, 3, size, size)
    for image in image_index.unique().tolist():
        chosen = image_index == image
        sampled = F.grid_sample(
            images[image : image + 1],
            grid[chosen].reshape(1, -1, size, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        crops[chosen] = sampled.reshape(3, -1, size, size).transpose(0, 1)
    resampled = F.grid_sample(
        masks[:, None].to(images.dtype), grid, mode="bilinear", align_corners=False
    )
    crop_masks = resampled[:, 0] >= 0.5
    thin = ~crop_masks.flatten(1).any(dim=1)
    if thin.any():
        crop_masks[thin] = _pixels_hit(masks[thin], left[thin], top[thin], side[thin], size)
    blank = zero_outside[:, None, None, None] & ~crop_masks[:, None]
    return crops.masked_fill(blank, 0), crop_masks


@torch.no_grad()
def clip_image_prompts(
    clip: ClipEncoder,
    images: Tensor,
    image_index: Tensor,
    masks: Tensor,
    generator: torch.Generator | None = None,
    expand_range: tuple[float, float] = (1.0, 2.0),
    zero_outside_probability: float = 0.5,
) -> Tensor:
    """``P×embed_dim`` CLIP image embeddings of P masks (App. D.5): :func:`mask_crops` at
    CLIP's input size, then :meth:`ClipEncoder.encode_image` with the crop masks; on the
    CLIP's device, without gradients."""
    crops, crop_masks = mask_crops(
        images,
        image_index,
        masks,
        clip.image_size,
        generator=generator,
        expand_range=expand_range,
        zero_outside_probability=zero_outside_probability,
    )
    return clip.encode_image(crops, crop_masks)


def text_settings(text: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``training.text`` settings completed with :data:`TEXT_DEFAULTS`, as plain containers;
    unknown keys, a missing CLIP and out-of-range values raise ValueError."""
    if text is None:
        return None
    unknown = sorted(set(text) - set(TEXT_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown training.text settings {unknown}; known: {sorted(TEXT_DEFAULTS)}"
        )
    settings = {**TEXT_DEFAULTS, **dict(text)}
    if (settings["clip_path"] is None) == (settings["clip_tiny"] is None):
        raise ValueError("training.text needs exactly one of clip_path and clip_tiny")
    low, high = (float(v) for v in settings["expand_range"])
    if not 1.0 <= low <= high:
        raise ValueError(f"training.text.expand_range must be 1 <= low <= high, got {[low, high]}")
    for key in ("probability", "zero_outside_probability"):
        if not 0.0 <= float(settings[key]) <= 1.0:
            raise ValueError(f"training.text.{key} must be in [0, 1], got {settings[key]}")
    return {
        "clip_path": None if settings["clip_path"] is None else str(settings["clip_path"]),
        "clip_tiny": None if settings["clip_tiny"] is None else dict(settings["clip_tiny"]),
        "clip_seed": int(settings["clip_seed"]),
        "min_mask_area": int(settings["min_mask_area"]),
        "probability": float(settings["probability"]),
        "expand_range": [low, high],
        "zero_outside_probability": float(settings["zero_outside_probability"]),
    }


def build_clip(settings: Mapping[str, Any]) -> ClipEncoder:
    """The frozen CLIP of the text settings: from ``clip_path`` or a random tiny one."""
    from sam_lightning.modeling.text_encoder import ClipEncoder, tiny_clip_config

    if settings["clip_path"] is not None:
        return ClipEncoder.from_pretrained(settings["clip_path"])
    return ClipEncoder.from_config(
        tiny_clip_config(**settings["clip_tiny"]), seed=settings["clip_seed"]
    )
