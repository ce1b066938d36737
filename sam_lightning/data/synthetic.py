"""A synthetic dataset of textured shapes with exact instance masks: training without a download.

Every item of :class:`SyntheticShapes` is a pure function of ``(seed, index)``: a background
with a few ellipses, rotated rectangles, convex polygons and rings painted back to front. Each
shape is filled with a texture (stripes, a gradient, a checkerboard or noise), so that masks are
not found by colour thresholding; a shape's mask is the set of its pixels that no later shape
covers, so the masks are exact (the image is painted from them) and disjoint. The background is
either one unannotated texture or a mosaic of Voronoi cells, each with its own texture and
annotated like a shape, so that every pixel belongs to a mask (as in SA-1B, whose masks cover
most of each image).

Items have the structure of :class:`sam_lightning.data.sa1b_dataset.SA1BDataset` items (``image``,
``annotations`` with COCO RLEs, ``image_info``, ``source``), and :func:`write_sa1b` writes a
dataset in the SA-1B layout (PNG images, so ``SA1BDataset`` reads back the same pixels).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sam_lightning.data.sa1b import SA1BSample, annotation_id, make_sa1b_document, write_sa1b_json
from sam_lightning.file_io import write_atomic
from sam_lightning.ops import rle_area, rle_encode, rle_to_bbox

SHAPES = ("ellipse", "rectangle", "polygon", "ring")
TEXTURES = ("stripes", "gradient", "checker", "noise")
BACKGROUNDS = ("texture", "cells")


class SyntheticShapes:
    """Map-style dataset of ``num_images`` synthetic images with exact instance masks.

    Args:
        num_images: the dataset length.
        image_size: ``(height, width)`` or one int for square images.
        min_shapes, max_shapes: each image draws a number of shapes uniformly in this range.
            Shapes whose visible part (after occlusion) is smaller than ``min_area`` pixels are
            not annotated, so an item may have fewer masks than shapes.
        seed: with the index, determines every item (a NumPy Generator seeded with
            ``[seed, index]``; no global random state), so items are the same in every
            process and DataLoader worker.
        min_area: the smallest annotated mask, in pixels.
        background: ``"texture"`` (one unannotated texture) or ``"cells"`` (a Voronoi mosaic
            of ``min_cells`` to ``max_cells`` cells, each textured and annotated; shapes, if
            any, are painted over it). With cells, ``min_shapes`` may be 0.
        min_cells, max_cells: the number of cells is drawn uniformly in this range.
        textures: the kinds of texture drawn for shapes and cells, a subset of
            :data:`TEXTURES` (the background texture of ``"texture"`` mixes two of them).

    Items are :class:`~sam_lightning.data.sa1b.SA1BSample` dicts; annotations carry the
    fields the data engine writes (``predicted_iou`` and ``stability_score`` are 1.0,
    ``point_coords`` one pixel centre inside the mask, ``crop_box`` the whole image).
    Masks are in drawing order: the cells first, then the shapes.
    """

    def __init__(
        self,
        num_images: int,
        image_size: int | tuple[int, int] = 256,
        min_shapes: int = 3,
        max_shapes: int = 8,
        seed: int = 0,
        min_area: int = 16,
        background: str = "texture",
        min_cells: int = 3,
        max_cells: int = 6,
        textures: Sequence[str] = TEXTURES,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if min(height, width) < 16:
            raise ValueError(f"image_size must be at least 16 x 16, got {height} x {width}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        least_shapes = 0 if background == "cells" else 1
        if not least_shapes <= min_shapes <= max_shapes:
            raise ValueError(
                f"need {least_shapes} <= min_shapes <= max_shapes with background "
                f"{background!r}, got {min_shapes}, {max_shapes}"
            )
        if background == "cells" and not 1 <= min_cells <= max_cells:
            raise ValueError(f"need 1 <= min_cells <= max_cells, got {min_cells}, {max_cells}")
        textures = tuple(textures)
        unknown = sorted(set(textures) - set(TEXTURES))
        if not textures or unknown:
            raise ValueError(f"textures must be a non-empty subset of {TEXTURES}, got {textures}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_images = num_images
        self.image_size = (int(height), int(width))
        self.min_shapes, self.max_shapes = min_shapes, max_shapes
        self.seed, self.min_area = seed, min_area
        self.background = background
        self.min_cells, self.max_cells = min_cells, max_cells
        self.textures = textures

    def __len__(self) -> int:
        return self.num_images

    def file_stem(self, index: int) -> str:
        """The name (without extension) of item ``index``'s files in :func:`write_sa1b`."""
        return f"synthetic_{self.seed}_{index:07d}"

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (H x W x 3 uint8) and the visible masks (N x H x W bool, disjoint, in
        drawing order, each of at least ``min_area`` pixels) of item ``index``."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, index])
        height, width = self.image_size
        if self.background == "cells":
            cells = int(rng.integers(self.min_cells, self.max_cells + 1))
            image, labels = _cell_mosaic(rng, height, width, cells, self.textures)
        else:
            cells = 0
            image = _background(rng, height, width, self.textures)
            labels = np.full((height, width), -1, dtype=np.int16)  # the mask at each pixel
        count = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        for shape in range(count):
            box, mask = _random_shape(rng, height, width)
            if not mask.any():
                continue
            y0, y1, x0, x1 = box
            texture = _texture(rng, y1 - y0, x1 - x0, self.textures)
            image[y0:y1, x0:x1][mask] = texture[mask]
            labels[y0:y1, x0:x1][mask] = cells + shape
        noise = rng.integers(-6, 7, size=image.shape, dtype=np.int16)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        masks = labels[None] == np.arange(cells + count, dtype=np.int16)[:, None, None]
        masks = masks[masks.sum(axis=(1, 2)) >= self.min_area]
        return image, masks

    def __getitem__(self, index: int) -> SA1BSample:
        index = self._check_index(index)
        image, masks = self.render(index)
        height, width = self.image_size
        annotations = []
        if len(masks):
            rles = rle_encode(masks)
            areas = rle_area(rles).tolist()
            boxes = rle_to_bbox(rles).round().long().tolist()
            for i, (rle, mask) in enumerate(zip(rles, masks)):
                annotations.append(
                    {
                        "id": annotation_id(index, i),
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": int(areas[i]),
                        "bbox": [int(v) for v in boxes[i]],
                        "predicted_iou": 1.0,
                        "point_coords": [_inner_point(mask)],
                        "stability_score": 1.0,
                        "crop_box": [0, 0, width, height],
                    }
                )
        return {
            "image": image,
            "annotations": annotations,
            "image_info": {
                "image_id": index,
                "width": width,
                "height": height,
                "file_name": f"{self.file_stem(index)}.png",
            },
            "source": f"synthetic(seed={self.seed})[{index}]",
        }

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return int(index) % len(self)

    def __repr__(self) -> str:
        height, width = self.image_size
        cells = f"{self.min_cells}-{self.max_cells} cells, " if self.background == "cells" else ""
        return (
            f"SyntheticShapes({self.num_images} images of {height} x {width}, {cells}"
            f"{self.min_shapes}-{self.max_shapes} shapes, seed={self.seed})"
        )


def write_sa1b(dataset: SyntheticShapes, directory: str | os.PathLike[str]) -> list[Path]:
    """Writes every item of ``dataset`` to ``directory`` in the SA-1B layout: ``<stem>.png``
    next to ``<stem>.json`` (stem :meth:`SyntheticShapes.file_stem`), readable by
    ``SA1BDataset(directory)`` with the same images, annotations and image info. Returns the
    JSON paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(dataset)):
        item = dataset[index]
        info = item["image_info"]
        buffer = _png_bytes(item["image"])
        write_atomic(directory / info["file_name"], buffer)
        document = make_sa1b_document(
            item["annotations"],
            image_id=info["image_id"],
            width=info["width"],
            height=info["height"],
            file_name=info["file_name"],
            annotation_ids=[ann["id"] for ann in item["annotations"]],
        )
        path = directory / f"{Path(info['file_name']).stem}.json"
        paths.append(write_sa1b_json(path, document))
    return paths


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _inner_point(mask: np.ndarray) -> list[float]:
    """The centre ``[x, y]`` of the middle pixel (in row-major order) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    middle = len(ys) // 2
    return [float(xs[middle]) + 0.5, float(ys[middle]) + 0.5]


# ------------------------------------------------------------------------------ drawing


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _texture(
    rng: np.random.Generator, height: int, width: int, kinds: Sequence[str] = TEXTURES
) -> np.ndarray:
    """An H x W x 3 float32 texture of a random kind of ``kinds`` and random colours."""
    kind = kinds[int(rng.integers(len(kinds)))]
    first, second = _colour(rng), _colour(rng)
    if kind == "noise":
        noise = rng.standard_normal((height, width, 1), dtype=np.float32)
        return first + rng.uniform(10, 40) * noise
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)  # H x W
    if kind == "stripes":
        period = rng.uniform(4, 16)
        t = 0.5 + 0.5 * np.sin(along * (2 * math.pi / period))
    elif kind == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    else:  # checker
        cell = int(rng.integers(3, 10))
        t = ((ys // cell + xs // cell) % 2).astype(np.float32)
    return first + (second - first) * t[..., None]


def _background(
    rng: np.random.Generator, height: int, width: int, kinds: Sequence[str] = TEXTURES
) -> np.ndarray:
    """A low-contrast textured background, H x W x 3 float32."""
    base = _texture(rng, height, width, kinds)
    detail = _texture(rng, height, width, kinds)
    return 0.7 * base + 0.3 * detail


def _cell_mosaic(
    rng: np.random.Generator, height: int, width: int, count: int, kinds: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """A Voronoi mosaic of ``count`` cells with uniform random sites, each filled with its own
    texture: the H x W x 3 float32 image and the H x W int16 cell of each pixel (nearest site
    to the pixel centre, ties to the lower index)."""
    sites = rng.uniform(0, 1, (count, 2)) * (height, width)
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    labels = np.zeros((height, width), dtype=np.int16)
    nearest = np.full((height, width), np.inf, dtype=np.float32)
    for cell, (sy, sx) in enumerate(sites.astype(np.float32)):
        distance = (ys - sy) ** 2 + (xs - sx) ** 2
        closer = distance < nearest
        labels[closer], nearest[closer] = cell, distance[closer]
    image = np.empty((height, width, 3), dtype=np.float32)
    for cell in range(count):
        inside = labels == cell
        image[inside] = _texture(rng, height, width, kinds)[inside]
    return image, labels


def _random_shape(
    rng: np.random.Generator, height: int, width: int
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """A random shape: its box ``(y0, y1, x0, x1)`` clipped to the image and its mask there."""
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    side = min(height, width)
    a = rng.uniform(0.06, 0.3) * side  # semi-axes
    b = a * rng.uniform(0.4, 1.0)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    angle = rng.uniform(0, math.pi)
    r = math.ceil(max(a, b)) + 1  # every shape lies in the disc of radius max(a, b)
    y0, y1 = max(0, int(cy) - r), min(height, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(width, int(cx) + r + 1)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy  # pixel centres
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = xs * cos + ys * sin, -xs * sin + ys * cos  # rotated coordinates
    if kind == "ellipse":
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    elif kind == "rectangle":
        mask = (np.abs(u) <= a / math.sqrt(2)) & (np.abs(v) <= b / math.sqrt(2))
    elif kind == "ring":
        radius = (u / a) ** 2 + (v / b) ** 2
        mask = (radius <= 1) & (radius >= rng.uniform(0.2, 0.6))
    else:  # a convex polygon: vertices on the ellipse in angular order
        count = int(rng.integers(3, 8))
        thetas = np.sort(rng.uniform(0, 2 * math.pi, count))
        px, py = a * np.cos(thetas), b * np.sin(thetas)
        mask = np.ones(u.shape, dtype=bool)
        for i in range(count):
            j = (i + 1) % count
            cross = (px[j] - px[i]) * (v - py[i]) - (py[j] - py[i]) * (u - px[i])
            mask &= cross >= 0
    return (y0, y1, x0, x1), mask
