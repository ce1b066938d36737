"""Dataset items to the samples of training and validation: resize (optionally large-scale
jitter), pad, pick masks.

A sample lives in the model's input frame: the image resized so that its longest side
is ``image_size`` (PIL bilinear, as :class:`sam_lightning.transforms.ResizeLongestSide` does for
the predictor) and zero-padded at the bottom and right to ``image_size`` x ``image_size``. The
image stays uint8; ``Sam.preprocess`` normalises it (and pads nothing more).

Masks are resized with nearest-neighbour sampling at pixel centres (output pixel ``i`` reads
source pixel ``floor((i + 0.5) * old / new)``, torch's ``"nearest-exact"``): masks stay exact
booleans, cost one gather, and use the same pixel-centre convention as the bilinear image, so
they are aligned with it to within half a pixel. (Area averaging and a threshold would be
smoother on downscaling but costs a float resize per mask.)

Large-scale jitter (LSJ, Ghiasi et al. 2021, "Simple Copy-Paste"; detectron2's ``ResizeScale``
+ ``FixedSizeCrop``): the longest side is scaled to ``image_size * s`` with ``s`` uniform in
``scale_range`` (default [0.1, 2.0]); a larger image is cropped to ``image_size`` at a random
offset, a smaller one is padded at the bottom and right. Only the crop is resampled (PIL
``resize(box=...)``), so scale 2 costs no more than scale 1.

Randomness comes from a NumPy Generator passed in (see :func:`sample_rng`): no global state,
so DataLoader workers produce the same samples whatever their number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from PIL import Image

from sam_lightning.data.sa1b_dataset import decode_masks
from sam_lightning.ops import rle_area, rle_to_bbox
from sam_lightning.transforms import ResizeLongestSide

log = logging.getLogger(__name__)


class Sample(TypedDict):
    """One sample of training or validation (S = ``image_size``, K = the number of masks kept)."""

    image: torch.Tensor  # 3 x S x S uint8, the image at the top left, zeros elsewhere
    masks: torch.Tensor  # K x S x S bool, in the same frame
    annotation_ids: torch.Tensor  # K int64, the ``id`` of each kept annotation
    input_size: tuple[int, int]  # (h, w) of the image region in the S x S frame
    original_size: tuple[int, int]  # (H, W) of the dataset image
    source: str


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator of sample ``index`` in ``epoch``: a pure function of the three numbers."""
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class SampleTransform:
    """Turns a dataset item (``image`` H x W x 3 uint8, ``annotations`` with COCO RLEs, as
    :class:`~sam_lightning.data.sa1b_dataset.SA1BDataset` yields) into a :class:`Sample`.

    Args:
        image_size: S, the side of the square model input (SAM: 1024).
        max_masks: keep at most this many masks, a random subset (the paper samples 64 per
            GPU; SAM paper, Appendix A "Training algorithm").
        max_mask_fraction: drop masks covering more than this fraction of the (original)
            image (0.9 in the paper).
        lsj: apply large-scale jitter (see the module docstring).
        scale_range: LSJ scale range, relative to the plain resize.
        chunk: masks decoded at once while looking for non-empty ones.
    """

    image_size: int = 1024
    max_masks: int = 64
    max_mask_fraction: float = 0.9
    lsj: bool = False
    scale_range: tuple[float, float] = (0.1, 2.0)
    chunk: int = 64

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.max_masks < 0 or self.chunk < 1:
            raise ValueError("image_size and chunk must be >= 1 and max_masks >= 0")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")

    def __call__(self, item: Mapping[str, Any], rng: np.random.Generator) -> Sample:
        image = np.asarray(item["image"])
        height, width = image.shape[:2]
        size = self.image_size
        scale = rng.uniform(*self.scale_range) if self.lsj else 1.0
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, size * scale)
        new_h, new_w = max(new_h, 1), max(new_w, 1)
        y0 = int(rng.integers(0, new_h - size + 1)) if new_h > size else 0
        x0 = int(rng.integers(0, new_w - size + 1)) if new_w > size else 0
        crop_h, crop_w = min(new_h, size), min(new_w, size)
        window = (y0, x0, crop_h, crop_w)

        resized = _resize_crop_image(image, (new_h, new_w), window)
        image_out = torch.zeros((3, size, size), dtype=torch.uint8)
        image_out[:, :crop_h, :crop_w] = torch.from_numpy(resized).permute(2, 0, 1)

        rows = _nearest_indices(height, new_h, y0, crop_h)
        cols = _nearest_indices(width, new_w, x0, crop_w)
        annotations = item["annotations"]
        candidates = self._candidates(annotations, (height, width), rows, cols)
        candidates = candidates[rng.permutation(len(candidates))]
        masks, kept = self._take_masks(annotations, candidates, rows, cols, (height, width))
        masks_out = torch.zeros((len(masks), size, size), dtype=torch.bool)
        masks_out[:, :crop_h, :crop_w] = masks
        ids = torch.tensor([annotations[i]["id"] for i in kept], dtype=torch.int64)
        return {
            "image": image_out,
            "masks": masks_out,
            "annotation_ids": ids,
            "input_size": (crop_h, crop_w),
            "original_size": (height, width),
            "source": str(item.get("source", "")),
        }

    def _candidates(
        self,
        annotations: Sequence[Mapping[str, Any]],
        original: tuple[int, int],
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> np.ndarray:
        """Indices of the annotations that are non-empty, not too large, and whose box meets
        the source region the crop samples."""
        if not annotations:
            return np.zeros(0, dtype=np.int64)
        rles = [ann["segmentation"] for ann in annotations]
        areas = rle_area(rles).numpy()
        boxes = rle_to_bbox(rles).numpy()  # x, y, w, h
        keep = (areas > 0) & (areas <= self.max_mask_fraction * original[0] * original[1])
        # Source pixels the crop reads: rows[0]..rows[-1], cols[0]..cols[-1].
        keep &= (boxes[:, 0] <= int(cols[-1])) & (boxes[:, 0] + boxes[:, 2] > int(cols[0]))
        keep &= (boxes[:, 1] <= int(rows[-1])) & (boxes[:, 1] + boxes[:, 3] > int(rows[0]))
        return np.flatnonzero(keep)

    def _take_masks(
        self,
        annotations: Sequence[Mapping[str, Any]],
        order: np.ndarray,
        rows: torch.Tensor,
        cols: torch.Tensor,
        original: tuple[int, int],
    ) -> tuple[torch.Tensor, list[int]]:
        """The first ``max_masks`` annotations in ``order`` that stay non-empty after the
        resize and crop: masks (K x crop_h x crop_w bool) and their annotation indices."""
        found: list[torch.Tensor] = []
        kept: list[int] = []
        for start in range(0, len(order), self.chunk):
            if len(kept) >= self.max_masks:
                break
            indices = order[start : start + self.chunk].tolist()
            masks = decode_masks(annotations, indices, original)[:, rows][:, :, cols]
            nonempty = masks.flatten(1).any(1)
            room = self.max_masks - len(kept)
            chosen = torch.nonzero(nonempty).flatten()[:room]
            found.append(masks[chosen])
            kept.extend(indices[i] for i in chosen.tolist())
        if not found:
            return torch.zeros((0, len(rows), len(cols)), dtype=torch.bool), kept
        return torch.cat(found), kept


def _nearest_indices(old: int, new: int, start: int, length: int) -> torch.Tensor:
    """Source indices of output pixels ``start .. start + length - 1`` when resizing ``old``
    pixels to ``new`` by nearest neighbour at pixel centres."""
    out = torch.arange(start, start + length, dtype=torch.float64)
    return ((out + 0.5) * (old / new)).floor().long().clamp_(0, old - 1)


def _resize_crop_image(
    image: np.ndarray, new_size: tuple[int, int], window: tuple[int, int, int, int]
) -> np.ndarray:
    """The ``window`` (y0, x0, h, w) of ``image`` resized bilinearly to ``new_size`` (H, W),
    computed by resampling only the window (equal to resizing all and cropping, up to 1 in
    rounding; exactly ResizeLongestSide.apply_image when the window is the whole image)."""
    height, width = image.shape[:2]
    new_h, new_w = new_size
    y0, x0, crop_h, crop_w = window
    pil = Image.fromarray(image)
    if (y0, x0, crop_h, crop_w) == (0, 0, new_h, new_w):
        return np.array(pil.resize((new_w, new_h), Image.BILINEAR))
    sy, sx = height / new_h, width / new_w
    box = (x0 * sx, y0 * sy, (x0 + crop_w) * sx, (y0 + crop_h) * sy)
    return np.array(pil.resize((crop_w, crop_h), Image.BILINEAR, box=box))


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Batches :class:`Sample` dicts (B images, P masks in all).

    Returns:
        ``images`` B x 3 x S x S uint8; ``masks`` P x S x S bool (every sample's masks in
        order); ``image_index`` P int64, the image of each mask; ``annotation_ids`` P int64;
        ``input_size`` and ``original_size`` B x 2 int64 (h, w); ``sources`` list of B str.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    counts = torch.tensor([len(s["masks"]) for s in samples], dtype=torch.int64)
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "masks": torch.cat([s["masks"] for s in samples]),
        "image_index": torch.repeat_interleave(torch.arange(len(samples)), counts),
        "annotation_ids": torch.cat([s["annotation_ids"] for s in samples]),
        "input_size": torch.tensor([s["input_size"] for s in samples], dtype=torch.int64),
        "original_size": torch.tensor([s["original_size"] for s in samples], dtype=torch.int64),
        "sources": [s["source"] for s in samples],
    }


#: A key of :class:`TransformedDataset`: an item index, or ``(item index, pass)``.
SampleKey = int | tuple[int, int]


def unpadded_images(batch: Mapping[str, Any]) -> list[torch.Tensor]:
    """The images of a :func:`collate` batch without their padding (``3×h×w`` each): the
    model normalises and pads them itself, as at inference."""
    return [
        image[:, : int(h), : int(w)]
        for image, (h, w) in zip(batch["images"], batch["input_size"].tolist())
    ]


def split_key(key: SampleKey, default_pass: int = 0) -> tuple[int, int]:
    """``(index, pass)`` of a :data:`SampleKey` (a plain index is in ``default_pass``)."""
    if isinstance(key, tuple):
        index, pass_index = key
        return int(index), int(pass_index)
    return int(key), default_pass


class TransformedDataset:
    """A dataset of :class:`Sample` s: key ``(index, pass)`` is
    ``transform(dataset[index], sample_rng(seed, pass, index))``; a plain ``index`` means
    ``(index, epoch)``. Keys are pure: DataLoader workers give the same samples whatever
    their number.
    """

    def __init__(
        self,
        dataset: Any,
        transform: Callable[[Mapping[str, Any], np.random.Generator], Sample],
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Sample:
        index, pass_index = split_key(key, self.epoch)
        return self.transform(self.dataset[index], sample_rng(self.seed, pass_index, index))

    def source(self, index: int) -> str:
        """The wrapped dataset's ``source(index)`` (for log messages), else ``"item <index>"``."""
        source = getattr(self.dataset, "source", None)
        return str(source(index)) if callable(source) else f"item {index}"


class SkipBadSamples:
    """Wraps a map-style dataset so that an item that raises one of ``errors`` (an unreadable
    image, a malformed annotation file) is logged, counted in :attr:`skipped` and replaced by
    the next index (wrapping around). Raises RuntimeError after ``max_consecutive`` failures
    in a row. The count is per process: every DataLoader worker keeps its own.

    Wrap the outermost dataset (``SkipBadSamples(TransformedDataset(SA1BDataset(...), ...))``) so
    that malformed RLEs, found only when masks are decoded, are skipped too."""

    def __init__(
        self,
        dataset: Any,
        errors: tuple[type[BaseException], ...] = (OSError, ValueError),
        max_consecutive: int = 100,
    ) -> None:
        self.dataset, self.errors, self.max_consecutive = dataset, errors, max_consecutive
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Any:
        index, pass_index = split_key(key)
        for attempt in range(min(self.max_consecutive, len(self))):
            current = (index + attempt) % len(self)
            try:
                return self.dataset[(current, pass_index) if isinstance(key, tuple) else current]
            except self.errors as error:
                self.skipped += 1
                log.warning("skipping %s: %s", self._name(current), error)
        raise RuntimeError(
            f"{min(self.max_consecutive, len(self))} consecutive items from index {index} failed"
        )

    def _name(self, index: int) -> str:
        source = getattr(self.dataset, "source", None)
        if callable(source):
            try:
                return f"item {index} ({source(index)})"
            except Exception:  # noqa: BLE001 - the name is only for the log message
                pass
        return f"item {index}"
