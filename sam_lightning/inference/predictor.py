"""Interactive mask prediction: embed an image once, then decode many prompts against it.

:class:`SamPredictor` has the API and numerics of the official ``segment_anything``
predictor, validates its inputs with clear errors, and adds a multi-image path
(:meth:`SamPredictor.set_image_batch` / :meth:`SamPredictor.predict_batch`) that embeds all
images in one encoder call and decodes all their prompts in one decoder call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sam_lightning.inference import _checks
from sam_lightning.transforms import ResizeLongestSide

if TYPE_CHECKING:
    from sam_lightning.modeling.sam import Sam
    from sam_lightning.modeling.text_encoder import ClipEncoder

#: Float elements per chunk of mask upscaling in :meth:`SamPredictor._postprocess` (64 MB).
POSTPROCESS_CHUNK_ELEMENTS = 16 * 2**20

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]
TorchPrediction = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class SamPredictor:
    """Computes an image embedding once and predicts masks for prompts on it.

    Attributes:
        model: the :class:`~sam_lightning.modeling.sam.Sam` model.
        transform: the :class:`ResizeLongestSide` to the encoder's input size.
        features: embeddings of the set image(s), ``num_images x C x h x w``, or None.
        is_image_set: whether an image is set.
        original_size: (H, W) of the set image before resizing (first image of a batch).
        input_size: (H, W) of the set image after resizing (first image of a batch).
        original_sizes, input_sizes: the same for every image of a batch.
        text_encoder: the CLIP encoder of text prompts (App. D.5), or None.

    Args:
        sam_model: the model; for text prompts built with ``text_embed_dim`` equal to the
            CLIP embedding width.
        text_encoder: a :class:`~sam_lightning.modeling.text_encoder.ClipEncoder`, needed
            for ``text=`` prompts given as strings.
    """

    def __init__(self, sam_model: Sam, text_encoder: ClipEncoder | None = None) -> None:
        self.model = sam_model
        self.text_encoder = text_encoder
        if text_encoder is not None:
            expected = sam_model.prompt_encoder.text_embed_dim
            if expected is None:
                raise ValueError(
                    "a text_encoder was given but the model takes no text prompts: build "
                    f"it with text_embed_dim={text_encoder.embed_dim}"
                )
            if expected != text_encoder.embed_dim:
                raise ValueError(
                    f"the model's text prompts are {expected} wide but the text encoder's "
                    f"embeddings are {text_encoder.embed_dim} wide"
                )
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.model.device

    def reset_image(self) -> None:
        """Forgets the set image(s) and their embeddings."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_sizes: list[tuple[int, int]] = []
        self.input_sizes: list[tuple[int, int]] = []
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    # ----------------------------------------------------------------------------- images

    def _to_input(self, image: np.ndarray, image_format: str, name: str) -> torch.Tensor:
        """Validates a HxWx3 uint8 image and returns it resized, as a 3xhxw uint8 tensor."""
        _checks.check_image(image, name)
        _checks.check_image_format(image_format)
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
        return resized.permute(2, 0, 1).contiguous()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embeds ``image`` (HxWx3 uint8, ``image_format`` 'RGB' or 'BGR') for :meth:`predict`."""
        self.set_torch_image(self._to_input(image, image_format, "image")[None], image.shape[:2])

    @torch.inference_mode()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Embeds a 1x3xHxW image already resized with :attr:`transform` (long side equal to
        the encoder's ``img_size``); ``original_image_size`` is (H, W) before resizing."""
        target = self.transform.target_length
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[:2] != (1, 3) or max(shape[2:]) != target:
            raise ValueError(
                f"set_torch_image expects a 1x3xHxW image with long side {target}, got {shape}"
            )
        if len(original_image_size) != 2:
            raise ValueError(f"original_image_size must be (H, W), got {original_image_size}")
        self.reset_image()
        input_image = self.model.preprocess(transformed_image)
        self.set_features(
            self.model.image_encoder(input_image),
            [(int(original_image_size[0]), int(original_image_size[1]))],
            [(shape[2], shape[3])],
        )

    @torch.inference_mode()
    def set_image_batch(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> None:
        """Embeds several HxWx3 uint8 images (sizes may differ) in one encoder call, for
        :meth:`predict_batch`."""
        if len(images) == 0:
            raise ValueError("set_image_batch needs at least one image, got an empty list")
        inputs = [self._to_input(im, image_format, f"images[{i}]") for i, im in enumerate(images)]
        self.reset_image()
        self.set_features(
            self.model.encode_images(inputs),
            [(im.shape[0], im.shape[1]) for im in images],
            [(x.shape[1], x.shape[2]) for x in inputs],
        )

    def set_features(
        self,
        features: torch.Tensor,
        original_sizes: list[tuple[int, int]],
        input_sizes: list[tuple[int, int]],
    ) -> None:
        """Sets embeddings computed elsewhere (``B x C x h x w``, e.g. rows of an earlier
        :meth:`set_image_batch`) with each image's original and resized (H, W)."""
        self.features = features
        self.original_sizes, self.input_sizes = original_sizes, input_sizes
        self.original_size, self.input_size = original_sizes[0], input_sizes[0]
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """Embeddings of the set image(s), ``num_images x C x h x w`` (C=256, h=w=64 for SAM)."""
        self._require_image()
        return self.features

    def _require_image(self, single: bool = False) -> None:
        if not self.is_image_set:
            raise RuntimeError(
                "No image is set: call set_image first (or set_image_batch for predict_batch)"
            )
        if single and len(self.original_sizes) != 1:
            raise RuntimeError(
                f"{len(self.original_sizes)} images are set with set_image_batch; use "
                "predict_batch, or set_image for a single image"
            )

    @property
    def _mask_input_size(self) -> tuple[int, int]:
        return tuple(self.model.prompt_encoder.mask_input_size)

    # ---------------------------------------------------------------------------- prompts

    def _prepare_prompts(
        self,
        point_coords: Any,
        point_labels: Any,
        boxes: Any,
        mask_input: Any,
        original_size: tuple[int, int],
        batched: bool,
    ) -> tuple[torch.Tensor | None, ...]:
        """Validates NumPy prompts in original pixel coordinates and returns them as batched
        tensors in the input frame: Bx(N)x2 coords, BxN labels, Bx4 boxes, Bx1xhxw masks."""
        coords_t = labels_t = boxes_t = masks_t = None
        size = (int(original_size[0]), int(original_size[1]))
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if point_coords is not None:
            coords = _checks.as_tensor(point_coords, "point_coords")
            labels = point_labels
            if labels is not None:
                labels = _checks.as_tensor(labels, "point_labels")
            _checks.check_points(coords, labels, int(batched), size, "image")
            coords_t = self._to_device(self.transform.apply_coords(coords.cpu().numpy(), size))
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)
        if boxes is not None:
            checked = _checks.check_boxes(_checks.as_tensor(boxes, "box"), batched)
            _checks.check_boxes_overlap(checked, size, "image")
            boxes_t = self._to_device(self.transform.apply_boxes(checked.cpu().numpy(), size))
            _checks.check_boxes_fit(boxes_t, checked)
        if mask_input is not None:
            masks = _checks.as_tensor(mask_input, "mask_input")
            if batched:
                expected = (masks.shape[0] if masks.ndim else 0, 1, *self._mask_input_size)
                hint = "expected Bx1xHxW low-resolution logits"
            else:
                expected = (1, *self._mask_input_size)
                hint = "pass one mask of a previous prediction, e.g. low_res_logits[[i]]"
            _checks.check_mask_input(masks, expected, hint)
            masks_t = self._to_device(masks)
        if not batched:
            coords_t, labels_t, masks_t = (
                None if t is None else t[None] for t in (coords_t, labels_t, masks_t)
            )
        return coords_t, labels_t, boxes_t, masks_t

    def _to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float, device=self.device)

    @torch.inference_mode()
    def _text_embeddings(self, text: str | Sequence[str] | torch.Tensor | None) -> Any:
        """``B×D`` CLIP embeddings of text prompts: strings are encoded with
        :attr:`text_encoder`, a tensor is taken as embeddings already."""
        if text is None:
            return None
        if self.model.prompt_encoder.text_embed_dim is None:
            raise ValueError(
                "text prompts need a model built with text_embed_dim=<CLIP embedding width>"
            )
        if isinstance(text, torch.Tensor):
            return text.to(self.device, torch.float)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r}")
        if self.text_encoder is None:
            raise ValueError(
                "text prompts given as strings need SamPredictor(model, text_encoder=...)"
            )
        return self.text_encoder.encode_text(texts).to(self.device, torch.float)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: str | None = None,
    ) -> Prediction:
        """Predicts masks for one prompt on the image set with :meth:`set_image`.

        Args:
            point_coords: Nx2 XY points in pixels of the original image.
            point_labels: N labels: 1 foreground, 0 background (-1 padding, 2/3 box corners).
            box: XYXY box (4 or 1x4) in pixels of the original image. Like the points, it
                must be in the image: it must overlap ``[0, W] x [0, H]`` (a box partly
                outside is taken, as the official SAM takes it).
            mask_input: 1xhxw low-resolution logits of a previous prediction (h=w=256 for SAM).
            multimask_output: return 3 masks instead of 1 (better for ambiguous prompts).
            return_logits: return mask logits instead of binary masks.
            text: a free-form text prompt (e.g. ``"a wheel"``, App. D.5), alone or with the
                other prompts; needs the predictor's ``text_encoder``.

        Returns:
            masks (CxHxW, bool unless ``return_logits``), quality scores (C), and
            low-resolution logits (Cxhxw) for the next ``mask_input``.
        """
        self._require_image(single=True)
        if text is not None and not isinstance(text, str):
            raise ValueError(f"predict takes one text (a string), got {text!r}; see predict_torch")
        prompts = self._prepare_prompts(
            point_coords, point_labels, box, mask_input, self.original_size, batched=False
        )
        masks, scores, low_res = self._predict_prepared(
            *prompts, multimask_output, return_logits, self._text_embeddings(text)
        )
        return masks[0].cpu().numpy(), scores[0].cpu().numpy(), low_res[0].cpu().numpy()

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: Sequence[str] | torch.Tensor | None = None,
    ) -> TorchPrediction:
        """Predicts masks for a batch of B prompts on the image set with :meth:`set_image`.

        Prompts are tensors already in the resized input frame (see :attr:`transform`):
        point_coords BxNx2, point_labels BxN, boxes Bx4 (XYXY), mask_input Bx1xhxw; text is
        B strings (encoded together by the ``text_encoder``) or BxD CLIP embeddings. Points
        must lie in the input frame and boxes must overlap it.

        Returns:
            masks BxCxHxW (bool unless ``return_logits``), scores BxC, low-res logits BxCxhxw.
        """
        self._require_image(single=True)
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if point_coords is not None:
            _checks.check_points(
                point_coords, point_labels, 1, self.input_size, "resized input frame", 1e-3
            )
        if boxes is not None:
            boxes = _checks.check_boxes(boxes, batched=True)
            _checks.check_boxes_overlap(boxes, self.input_size, "resized input frame", 1e-3)
        if mask_input is not None:
            expected = (mask_input.shape[0] if mask_input.ndim else 0, 1, *self._mask_input_size)
            _checks.check_mask_input(mask_input, expected, "expected Bx1xHxW low-resolution logits")
        return self._predict_prepared(
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output,
            return_logits,
            self._text_embeddings(text),
        )

    @torch.inference_mode()
    def _predict_prepared(
        self,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
        text_embeddings: torch.Tensor | None = None,
    ) -> TorchPrediction:
        _checks.check_batch_sizes(
            point_coords=None if coords is None else coords.shape[0],
            boxes=None if boxes is None else boxes.shape[0],
            mask_input=None if masks is None else masks.shape[0],
            text=None if text_embeddings is None else text_embeddings.shape[0],
        )
        low_res, scores = self.model.decode(
            self.features,
            coords,
            labels,
            boxes,
            masks,
            multimask_output=multimask_output,
            text_embeddings=text_embeddings,
        )
        masks = self._postprocess(low_res, self.input_size, self.original_size, return_logits)
        return masks, scores, low_res

    def _postprocess(
        self,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        return_logits: bool,
    ) -> torch.Tensor:
        """Upscales ``P x C x h x w`` logits to ``original_size``, thresholded unless
        ``return_logits``. Works through the prompts in chunks so that the float
        intermediates stay near :data:`POSTPROCESS_CHUNK_ELEMENTS`: a batch of binary masks
        never exists as full-size floats (64 boxes x 3 masks at 1024x1536 would be 1.2 GB)."""
        dtype = low_res.dtype if return_logits else torch.bool
        out = torch.empty((*low_res.shape[:2], *original_size), dtype=dtype, device=low_res.device)
        largest = max(self.transform.target_length**2, original_size[0] * original_size[1])
        chunk = max(1, POSTPROCESS_CHUNK_ELEMENTS // (low_res.shape[1] * largest))
        for start in range(0, low_res.shape[0], chunk):
            part = slice(start, start + chunk)
            masks = self.model.postprocess_masks(low_res[part], input_size, original_size)
            out[part] = masks if return_logits else masks > self.model.mask_threshold
        return out

    def predict_batch(
        self,
        point_coords: Sequence[Any] | None = None,
        point_labels: Sequence[Any] | None = None,
        boxes: Sequence[Any] | None = None,
        mask_input: Sequence[Any] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> list[Prediction]:
        """Predicts masks for prompts on every image set with :meth:`set_image_batch`, in one
        decoder call.

        Each given argument is a list with one entry per image; entry ``i`` holds the B_i
        prompts of image ``i`` as NumPy arrays in that image's original pixel coordinates,
        batched like :meth:`predict_torch`: point_coords B_ixNx2, point_labels B_ixN,
        boxes B_ix4 (XYXY), mask_input B_ix1xhxw. The same prompt kinds and the same N must
        be used for every image; B_i may differ (and be 0).

        Returns:
            one ``(masks B_ixCxHxW, scores B_ixC, low_res B_ixCxhxw)`` of NumPy arrays per
            image, as :meth:`predict` returns for one prompt.
        """
        self._require_image()
        num_images = len(self.original_sizes)
        given = {
            "point_coords": point_coords,
            "point_labels": point_labels,
            "boxes": boxes,
            "mask_input": mask_input,
        }
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError("predict_batch needs point_coords, boxes or mask_input")
        for name, value in given.items():
            if value is not None and len(value) != num_images:
                raise ValueError(
                    f"{name} must have one entry per image ({num_images}), got {len(value)}"
                )
            if value is not None and any(entry is None for entry in value):
                raise ValueError(f"{name} has a None entry; give every image an array")
        per_image = [
            self._prepare_prompts(
                *(None if v is None else v[i] for v in given.values()), size, batched=True
            )
            for i, size in enumerate(self.original_sizes)
        ]
        counts = [
            _checks.check_batch_sizes(
                **{name: None if t is None else t.shape[0] for name, t in zip(given, prompts)}
            )
            for prompts in per_image
        ]
        if point_coords is not None and len({p[0].shape[1] for p in per_image}) > 1:
            raise ValueError(
                "every image needs the same number of points per prompt, got "
                f"{[tuple(p[0].shape) for p in per_image]}"
            )
        stacked = [None if parts[0] is None else torch.cat(parts) for parts in zip(*per_image)]
        image_index = torch.repeat_interleave(
            torch.arange(num_images, device=self.device), torch.tensor(counts, device=self.device)
        )
        return self._predict_batch_prepared(
            stacked, image_index, counts, multimask_output, return_logits
        )

    @torch.inference_mode()
    def _predict_batch_prepared(
        self,
        prompts: list[torch.Tensor | None],
        image_index: torch.Tensor,
        counts: list[int],
        multimask_output: bool,
        return_logits: bool,
    ) -> list[Prediction]:
        low_res, scores = self.model.decode(
            self.features, *prompts, multimask_output=multimask_output, image_index=image_index
        )
        results = []
        for low, score, input_size, original_size in zip(
            low_res.split(counts), scores.split(counts), self.input_sizes, self.original_sizes
        ):
            masks = self._postprocess(low, input_size, original_size, return_logits)
            results.append((masks.cpu().numpy(), score.cpu().numpy(), low.cpu().numpy()))
        return results
