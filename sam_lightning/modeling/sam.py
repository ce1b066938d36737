"""The SAM model: image encoder + prompt encoder + mask decoder, differentiable and batched."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_lightning.modeling.mask_decoder import MaskDecoder
from sam_lightning.modeling.prompt_encoder import PromptEncoder

#: The three parts of SAM, the names of its submodules.
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
_PROMPT_KEYS = ("point_coords", "point_labels", "boxes", "mask_inputs", "text_embeddings")


class Sam(nn.Module):
    """Segment Anything: predicts object masks from images and prompts.

    Nothing here runs under ``no_grad``: every method is differentiable, for training.
    Images enter in the *input frame*: ``3×h×w`` RGB in 0–255, resized so that the
    longest side equals ``img_size``; prompts are pixel coordinates of that frame.

    Args:
        image_encoder: backbone, ``B×3×S×S`` -> ``B×C×h×w``, with attributes ``img_size``
            (``S``) and ``activation_checkpointing``, and a ``layer_decay_exponent(name)``
            for training (:class:`~sam_lightning.modeling.image_encoder.ImageEncoderViT`,
            :class:`~sam_lightning.modeling.tiny_vit.TinyViT`), and optionally an
            ``unused_parameters()`` dict of the parameters its forward never uses.
        prompt_encoder: embeds points, boxes and masks.
        mask_decoder: predicts masks from image and prompt embeddings.
        pixel_mean, pixel_std: per-channel normalisation of the 0–255 input.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    #: Weights the loaded checkpoint did not hold (freshly initialised: e.g. the text
    #: projection of an official checkpoint loaded into a model with a text prompt).
    missing_from_checkpoint: tuple[str, ...] = ()

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters that forward never uses (e.g. the ImageNet classifier kept in
        MobileSAM's checkpoint): training keeps them out of the optimiser and DDP."""
        unused = getattr(self.image_encoder, "unused_parameters", None)
        return [] if unused is None else list(unused().values())

    @property
    def img_size(self) -> int:
        """Side of the square encoder input."""
        return self.image_encoder.img_size

    def preprocess(self, x: Tensor) -> Tensor:
        """Normalises ``[B×]3×h×w`` 0–255 images (in the model's dtype) and zero-pads them
        (bottom/right) to ``img_size×img_size``."""
        h, w = x.shape[-2:]
        if h > self.img_size or w > self.img_size:
            raise ValueError(f"image of size {h}×{w} exceeds the input size {self.img_size}")
        x = (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: Tensor, input_size: Sequence[int], original_size: Sequence[int]
    ) -> Tensor:
        """Upscales ``B×C×h×w`` mask logits to the padded input, crops the padding
        (``input_size``, the resized image's ``(H, W)``) and resizes to ``original_size``."""
        # Upscale only the low-resolution rows and columns that reach the unpadded input:
        # the padded ``img_size`` square would be cropped away anyway. Keeping one more
        # row/column than the input covers leaves every bilinear weight and index as in the
        # full upscaling (same scale factor), so the values are bitwise the same.
        low_h, low_w = masks.shape[-2:]
        size = (self.img_size, self.img_size)
        if self.img_size % low_h == 0 and self.img_size % low_w == 0:
            scale_h, scale_w = self.img_size // low_h, self.img_size // low_w
            rows = min(low_h, math.ceil(input_size[0] / scale_h) + 1)
            cols = min(low_w, math.ceil(input_size[1] / scale_w) + 1)
            masks, size = masks[..., :rows, :cols], (rows * scale_h, cols * scale_w)
        masks = F.interpolate(masks, size, mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def encode_images(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """Embeds images with one encoder call.

        Args:
            images: ``B×3×H×W`` tensor or a sequence of ``3×h_i×w_i`` tensors in the input
                frame (0–255, longest side ``img_size``).

        Returns:
            ``B×C×(img_size/16)×(img_size/16)`` image embeddings.
        """
        if isinstance(images, Tensor) and images.ndim == 4:
            batch = self.preprocess(images)
        else:
            batch = torch.stack([self.preprocess(image) for image in images])
        return self.image_encoder(batch)

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_inputs: Tensor | None = None,
        multimask_output: bool = True,
        image_index: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predicts masks for P prompts over B image embeddings.

        Args:
            image_embeddings: ``B×C×h×w`` from :meth:`encode_images`.
            point_coords: ``P×N×2`` ``(x, y)`` points in the input frame.
            point_labels: ``P×N`` labels (1 positive, 0 negative, -1 padding).
            boxes: ``P×4`` ``(x0, y0, x1, y1)`` boxes in the input frame.
            mask_inputs: ``P×1×4h×4w`` low-resolution mask logits.
            multimask_output: K = 3 ambiguity masks instead of K = 1.
            image_index: ``P`` LongTensor, the embedding of each prompt. Default: B == 1 is
                shared by all prompts, B == P pairs them one-to-one, otherwise ``ValueError``.
                Without any prompt, P is ``len(image_index)`` (default B).
            text_embeddings: ``P×D`` CLIP embeddings (text, or a mask region's image
                embedding in training; App. D.5), for a model built with
                ``text_embed_dim=D``.

        Returns:
            Low-resolution mask logits ``P×K×4h×4w`` and IoU predictions ``P×K``.
        """
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_coords given without point_labels")
            points = (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(
            points=points, boxes=boxes, masks=mask_inputs, text=text_embeddings
        )
        if points is None and boxes is None and mask_inputs is None and text_embeddings is None:
            num_prompts = image_embeddings.shape[0] if image_index is None else len(image_index)
            sparse = sparse.expand(num_prompts, -1, -1)
            dense = dense.expand(num_prompts, -1, -1, -1)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            image_index=image_index,
        )

    def forward(
        self, batched_input: Sequence[Mapping[str, Any]], multimask_output: bool
    ) -> list[dict[str, Tensor]]:
        """Predicts masks end to end; the official ``Sam.forward`` API, but differentiable,
        with one encoder call for all images and one decoder call per group of images whose
        prompts have the same structure.

        Args:
            batched_input: one dict per image with ``'image'`` (``3×h×w`` input frame),
                ``'original_size'`` ``(H, W)`` and optional prompts ``'point_coords'``
                ``B_i×N×2`` with ``'point_labels'`` ``B_i×N``, ``'boxes'`` ``B_i×4``,
                ``'mask_inputs'`` ``B_i×1×4h×4w``, ``'text_embeddings'`` ``B_i×D`` (CLIP).
            multimask_output: K = 3 ambiguity masks instead of K = 1.

        Returns:
            One dict per image: ``'masks'`` boolean ``B_i×K×H×W`` (original size),
            ``'iou_predictions'`` ``B_i×K``, ``'low_res_logits'`` ``B_i×K×4h×4w``.
        """
        if not batched_input:
            return []
        embeddings = self.encode_images([record["image"] for record in batched_input])
        outputs: list[dict[str, Tensor]] = [{} for _ in batched_input]
        for group in _group_by_prompt_structure(batched_input):
            records = [batched_input[i] for i in group]
            counts = [_num_prompts(record) for record in records]
            prompts = {key: _concat_prompts(records, counts, key) for key in _PROMPT_KEYS}
            image_index = torch.repeat_interleave(
                torch.tensor(group, device=embeddings.device),
                torch.tensor(counts, device=embeddings.device),
            )
            low_res, iou = self.decode(
                embeddings, **prompts, multimask_output=multimask_output, image_index=image_index
            )
            for i, record, logits, scores in zip(
                group, records, low_res.split(counts), iou.split(counts)
            ):
                masks = self.postprocess_masks(
                    logits, record["image"].shape[-2:], record["original_size"]
                )
                outputs[i] = {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": scores,
                    "low_res_logits": logits,
                }
        return outputs


def _num_prompts(record: Mapping[str, Any]) -> int:
    """Prompts of one image record: the batch of its first prompt, 1 without prompts."""
    for key in ("point_coords", "boxes", "mask_inputs", "text_embeddings"):
        if record.get(key) is not None:
            return record[key].shape[0]
    return 1


def _group_by_prompt_structure(batched_input: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Indexes of the records grouped so that their prompts can be concatenated: same
    prompt kinds, same number of points per prompt, same mask-input size."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, record in enumerate(batched_input):
        key = tuple(
            None if record.get(name) is None else tuple(record[name].shape[1:])
            for name in _PROMPT_KEYS
        )
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _concat_prompts(
    records: Sequence[Mapping[str, Any]], counts: Sequence[int], key: str
) -> Tensor | None:
    """Concatenates one prompt field of the records (batch-1 mask inputs are repeated to
    the record's prompt count, as they broadcast in the official model)."""
    if records[0].get(key) is None:
        return None
    parts = [record[key] for record in records]
    if key == "mask_inputs":
        parts = [part.expand(n, -1, -1, -1) for part, n in zip(parts, counts)]
    return torch.cat(parts)
