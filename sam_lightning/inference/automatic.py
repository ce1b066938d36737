"""The automatic mask generator: the fully automatic stage of SAM's data engine.

Same parameters, algorithm and output records as the official
``segment_anything.SamAutomaticMaskGenerator``: a grid of single-point prompts over the
image (and over overlapping crops), filtering by predicted IoU and stability score, box NMS
within and across crops, optional removal of small holes and islands, and RLE output.

What differs is how the work is done. Masks are filtered by predicted IoU *before* they
are upscaled; stability scores, boxes, RLE encoding and small-region removal run as
compiled batch operators (:mod:`sam_lightning.ops`); masks travel through the pipeline as
packed RLEs (:class:`PackedRLEs`) and per-mask values as tensors, so no step loops over
masks in Python or synchronises with the device per mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sam_lightning import ops
from sam_lightning.inference.crops import (
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
)
from sam_lightning.inference.mask_candidates import MaskCandidates
from sam_lightning.inference.packed_rles import PackedRLEs
from sam_lightning.inference.predictor import POSTPROCESS_CHUNK_ELEMENTS, SamPredictor
from sam_lightning.modeling.sam import Sam

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
#: A whole image's embedding as ``SamPredictor.set_features`` takes it.
Embedding = tuple[torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image by prompting SAM with a grid of points.

    Args:
        model: the SAM model.
        points_per_side: points along each side of the grid (``points_per_side**2`` in all);
            ``None`` when ``point_grids`` are given.
        points_per_batch: prompts decoded together (speed and memory only).
        pred_iou_thresh: keep masks whose predicted IoU is above this.
        stability_score_thresh: keep masks whose stability score is at least this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which NMS drops the lower-scoring duplicate.
        crop_n_layers: crop layers; layer ``i`` has ``(2**i)**2`` overlapping windows.
        crop_nms_thresh: box IoU of the NMS across crops (smaller crops win).
        crop_overlap_ratio: overlap of the first crop layer, as a fraction of the short side.
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / factor**i``.
        point_grids: explicit ``N x 2`` grids in [0, 1], one per crop layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this many
            pixels, then rerun NMS (masks left unchanged are preferred).
        output_mode: ``"binary_mask"``, ``"uncompressed_rle"`` or ``"coco_rle"``.
        max_mask_area_fraction: if set, drop masks covering at least this fraction of the
            image (SA-1B used 0.95). Not an official parameter; ``None`` keeps all.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        max_mask_area_fraction: float | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        if max_mask_area_fraction is not None and not 0 < max_mask_area_fraction <= 1:
            raise ValueError(
                f"max_mask_area_fraction must be in (0, 1] or None, got {max_mask_area_fraction}"
            )
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            if crop_n_points_downscale_factor < 1:
                raise ValueError(
                    "crop_n_points_downscale_factor must be >= 1, got "
                    f"{crop_n_points_downscale_factor}"
                )
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [_check_grid(g, i) for i, g in enumerate(point_grids)]
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(
                f"crop_n_layers={crop_n_layers} needs {crop_n_layers + 1} point grids, got "
                f"{len(self.point_grids)}"
            )
        self.predictor = SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.max_mask_area_fraction = max_mask_area_fraction

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks of an ``H x W x 3`` uint8 RGB image, as a list of records.

        Each record has ``segmentation`` (an ``H x W`` bool array or an RLE dict, by
        ``output_mode``), ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``,
        ``stability_score`` and ``crop_box`` (XYWH), as the official generator's.
        """
        _check_image(image)
        return self.to_records(self.generate_candidates(image))

    @torch.inference_mode()
    def generate_batch(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        """:meth:`generate` of each image, the whole-image crops of all of them embedded in
        one encoder call (the smaller crops of ``crop_n_layers > 0`` one at a time). On CPU
        a batch can change the embeddings in the last float bits, so records may differ from
        :meth:`generate`'s within that tolerance (masks at a threshold's edge can flip)."""
        for image in images:
            _check_image(image)
        if not images:
            return []
        self.predictor.set_image_batch(images)
        predictor = self.predictor
        features, originals, inputs = (
            predictor.features,
            predictor.original_sizes,
            predictor.input_sizes,
        )
        predictor.reset_image()
        return [
            self.to_records(
                self.generate_candidates(image, (features[i : i + 1], [originals[i]], [inputs[i]]))
            )
            for i, image in enumerate(images)
        ]

    @torch.inference_mode()
    def generate_candidates(
        self, image: np.ndarray, embedding: Embedding | None = None
    ) -> MaskCandidates:
        """The generator's masks before they are turned into records; ``embedding`` is the
        whole image's (features, original sizes, input sizes) when already computed."""
        height, width = image.shape[:2]
        masks = self._generate_masks(image, embedding)
        if self.min_mask_region_area > 0:
            nms_thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
            masks = self.postprocess_small_regions(masks, self.min_mask_region_area, nms_thresh)
        if self.max_mask_area_fraction is not None and len(masks):
            limit = self.max_mask_area_fraction * height * width
            masks = masks.select(masks.rles.areas() < limit)
        return masks

    def to_records(self, masks: MaskCandidates) -> list[dict[str, Any]]:
        """Official-format records of ``masks``."""
        rles = masks.rles
        size = [rles.height, rles.width]
        if self.output_mode == "coco_rle":
            segmentations = [{"size": size, "counts": s} for s in rles.counts_strings()]
        elif self.output_mode == "uncompressed_rle":
            segmentations = [{"size": size, "counts": c} for c in rles.uncompressed_counts()]
        else:
            segmentations = list(rles.decode().bool().numpy())
        xywh = masks.boxes.clone()
        xywh[:, 2:] -= xywh[:, :2]
        crop_xywh = masks.crop_boxes.clone()
        crop_xywh[:, 2:] -= crop_xywh[:, :2]
        columns = zip(
            segmentations,
            rles.areas().tolist(),
            xywh.tolist(),
            masks.iou_preds.tolist(),
            masks.points.tolist(),
            masks.stability_score.tolist(),
            crop_xywh.tolist(),
        )
        return [
            {
                "segmentation": segmentation,
                "area": area,
                "bbox": bbox,
                "predicted_iou": iou,
                "point_coords": [point],
                "stability_score": stability,
                "crop_box": crop_box,
            }
            for segmentation, area, bbox, iou, point, stability, crop_box in columns
        ]

    # ------------------------------------------------------------------------- pipeline

    def _generate_masks(self, image: np.ndarray, embedding: Embedding | None) -> MaskCandidates:
        height, width = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes(
            (height, width), self.crop_n_layers, self.crop_overlap_ratio
        )
        parts = [
            self._process_crop(image, box, layer, embedding if layer == 0 else None)
            for box, layer in zip(crop_boxes, layers)
        ]
        masks = MaskCandidates.cat(parts, height, width)
        if len(crop_boxes) > 1 and len(masks):
            # Prefer masks from smaller crops.
            crop_areas = (masks.crop_boxes[:, 2] - masks.crop_boxes[:, 0]) * (
                masks.crop_boxes[:, 3] - masks.crop_boxes[:, 1]
            )
            keep = ops.batched_nms(
                masks.boxes.float(),
                1 / crop_areas,
                torch.zeros(len(masks), dtype=torch.int64),
                self.crop_nms_thresh,
            )
            masks = masks.select(keep)
        return masks

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer: int, embedding: Embedding | None
    ) -> MaskCandidates:
        x0, y0, x1, y1 = crop_box
        height, width = image.shape[:2]
        crop = image[y0:y1, x0:x1, :]
        if embedding is None:
            self.predictor.set_image(crop)
        else:  # layer 0: the whole image, embedded by generate_batch
            self.predictor.set_features(*embedding)
        crop_size = crop.shape[:2]
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        parts = [
            self._process_batch(
                points[start : start + self.points_per_batch], crop_box, (height, width)
            )
            for start in range(0, len(points), self.points_per_batch)
        ]
        self.predictor.reset_image()
        masks = MaskCandidates.cat(parts, height, width)
        if not len(masks):
            return masks
        keep = ops.batched_nms(
            masks.boxes.float(),
            masks.iou_preds,
            torch.zeros(len(masks), dtype=torch.int64),
            self.box_nms_thresh,
        )
        masks = masks.select(keep)
        offset = torch.tensor([x0, y0, x0, y0])
        masks.boxes = masks.boxes + offset
        masks.points = masks.points + offset[:2]
        masks.crop_boxes = torch.tensor([crop_box], dtype=torch.int64).expand(len(masks), 4)
        return masks

    def _process_batch(
        self, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int]
    ) -> MaskCandidates:
        """Decodes one batch of point prompts and keeps the masks that pass the filters.

        ``points`` are in the crop's pixels; the returned boxes are in the crop's frame
        (shifted by :meth:`_process_crop`) and the RLEs in the image's."""
        predictor = self.predictor
        crop_size = predictor.original_size
        device = predictor.device
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=device)
        labels = torch.ones(len(coords), dtype=torch.int, device=device)
        low_res, iou_preds = predictor.model.decode(
            predictor.features, coords[:, None, :], labels[:, None], multimask_output=True
        )
        masks_per_point = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou_preds = iou_preds.flatten(0, 1)
        prompt_points = torch.from_numpy(points).repeat_interleave(masks_per_point, dim=0)

        # The IoU filter needs no pixels: apply it before upscaling.
        if self.pred_iou_thresh > 0.0:
            keep = (iou_preds > self.pred_iou_thresh).nonzero().flatten()
            low_res, iou_preds = low_res[keep], iou_preds[keep]
            prompt_points = prompt_points[keep.cpu()]

        largest = max(predictor.transform.target_length**2, crop_size[0] * crop_size[1])
        chunk = max(1, POSTPROCESS_CHUNK_ELEMENTS // largest)
        parts = []
        for start in range(0, len(low_res), chunk):
            index = slice(start, start + chunk)
            part = self._threshold_chunk(
                low_res[index], iou_preds[index], prompt_points[index], crop_box, image_size
            )
            if part is not None:
                parts.append(part)
        return MaskCandidates.cat(parts, *image_size)

    def _threshold_chunk(
        self,
        low_res: torch.Tensor,
        iou_preds: torch.Tensor,
        points: torch.Tensor,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> MaskCandidates | None:
        predictor = self.predictor
        threshold = predictor.model.mask_threshold
        logits = predictor.model.postprocess_masks(
            low_res[:, None], predictor.input_size, predictor.original_size
        )[:, 0]
        stability = ops.stability_score(logits, threshold, self.stability_score_offset).cpu()
        binary = logits > threshold
        del logits
        boxes = ops.masks_to_boxes(binary).cpu()
        height, width = image_size
        keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
        if self.stability_score_thresh > 0.0:
            keep &= stability >= self.stability_score_thresh
        selected = keep.nonzero().flatten()
        if not len(selected):
            return None
        if len(selected) < len(binary):
            binary = binary[selected.to(binary.device)]
        x0, y0, x1, y1 = crop_box
        if (x0, y0, x1, y1) != (0, 0, width, height):
            full = binary.new_zeros((len(binary), height, width))
            full[:, y0:y1, x0:x1] = binary
            binary = full
        return MaskCandidates(
            rles=PackedRLEs.encode(binary),
            boxes=boxes[selected],
            iou_preds=iou_preds.cpu()[selected],
            points=points[selected],
            stability_score=stability[selected],
            crop_boxes=torch.zeros(len(selected), 4, dtype=torch.int64),
        )

    @staticmethod
    def postprocess_small_regions(
        masks: MaskCandidates, min_area: int, nms_thresh: float
    ) -> MaskCandidates:
        """Fills holes and removes islands smaller than ``min_area`` pixels in every mask,
        then removes new duplicates with box NMS that prefers the masks left unchanged."""
        if not len(masks):
            return masks
        height, width = masks.rles.height, masks.rles.width
        chunk = max(1, POSTPROCESS_CHUNK_ELEMENTS // (height * width))
        boxes, changed, new_rles = [], [], []
        for start in range(0, len(masks), chunk):
            index = torch.arange(start, min(start + chunk, len(masks)))
            binary = masks.rles.select(index).decode().bool()
            binary, holes_changed = ops.remove_small_regions(binary, min_area, "holes")
            binary, islands_changed = ops.remove_small_regions(binary, min_area, "islands")
            part_changed = holes_changed | islands_changed
            boxes.append(ops.masks_to_boxes(binary))
            changed.append(part_changed)
            new_rles.append(PackedRLEs.encode(binary[part_changed]))
        boxes_t = torch.cat(boxes)
        changed_t = torch.cat(changed)
        keep = ops.batched_nms(
            boxes_t.float(),
            (~changed_t).float(),
            torch.zeros(len(masks), dtype=torch.int64),
            nms_thresh,
        )
        changed_index = changed_t.nonzero().flatten()
        masks = MaskCandidates(
            rles=masks.rles.replace(changed_index, PackedRLEs.cat(new_rles, height, width)),
            boxes=torch.where(changed_t[:, None], boxes_t, masks.boxes),
            iou_preds=masks.iou_preds,
            points=masks.points,
            stability_score=masks.stability_score,
            crop_boxes=masks.crop_boxes,
        )
        return masks.select(keep)


def _check_image(image: Any) -> None:
    """Raises ValueError unless ``image`` is a non-empty ``H x W x 3`` uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an H x W x 3 numpy array, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {list(image.shape)}")


def _check_grid(grid: Any, layer: int) -> np.ndarray:
    array = np.asarray(grid, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(
            f"point_grids[{layer}] must be an N x 2 array of (x, y) in [0, 1], got shape "
            f"{list(array.shape)}"
        )
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"point_grids[{layer}] must lie in [0, 1]")
    return array
