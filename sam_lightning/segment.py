"""Segment an image from point and box prompts and write the masks to a directory.

Usage::

    python -m sam_lightning.segment IMAGE --point X,Y[,LABEL] ... --box X0,Y0,X1,Y1 ... \\
        --model-type vit_b --checkpoint sam_vit_b_01ec64.pth --output DIR
    python -m sam_lightning.segment IMAGE --text "a wheel" ... --clip CLIP_DIR \\
        --model-type vit_h --checkpoint text_model.pth --output DIR

Writes ``DIR/mask_XX.png`` (0/255), ``DIR/overlay.png`` and ``DIR/masks.json`` (score, XYWH
bbox, area and COCO RLE per mask), each atomically. Several boxes are decoded as one batch
(each with all the points), and so are several texts (App. D.5: CLIP text prompts, for a
checkpoint trained with them); without ``--checkpoint`` the weights are random.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from sam_lightning.entry_points import OFFICIAL_CHECKPOINTS
from sam_lightning.file_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    UnreadableImageError,
    read_image,
    write_atomic,
)
from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling.build import sam_model_registry

Point = tuple[float, float, int]
Box = tuple[float, float, float, float]
MODEL_TYPES = tuple(sorted(sam_model_registry))
_MASK_FILE = re.compile(r"mask_\d+\.png")


def predict_masks(
    predictor: SamPredictor,
    points: Sequence[Point],
    boxes: Sequence[Box],
    multimask_output: bool,
    texts: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs the prompts on the predictor's image: all points with each box (one batch when
    there are several boxes) or with each text (one batch), or the points alone.

    Returns masks MxHxW bool, scores M and the prompt index (the box or text) of each mask."""
    if texts and boxes:
        raise ValueError("give text prompts with points, not with boxes")
    coords = np.array([p[:2] for p in points], dtype=float).reshape(-1, 2) if points else None
    labels = np.array([p[2] for p in points], dtype=int) if points else None
    if texts:
        return _predict_texts(predictor, coords, labels, texts, multimask_output)
    if len(boxes) <= 1:
        box = np.array(boxes[0], dtype=float) if boxes else None
        masks, scores, _ = predictor.predict(coords, labels, box, None, multimask_output)
        return masks, scores, np.zeros(len(masks), dtype=int)
    size = predictor.original_size
    boxes_t = predictor.transform.apply_boxes_torch(torch.tensor(boxes, dtype=torch.float), size)
    coords_t = labels_t = None
    if points:
        coords_t = predictor.transform.apply_coords_torch(torch.from_numpy(coords), size)
        coords_t = coords_t[None].expand(len(boxes), -1, -1)
        labels_t = torch.from_numpy(labels)[None].expand(len(boxes), -1)
    masks_t, scores_t, _ = predictor.predict_torch(
        coords_t, labels_t, boxes_t.to(predictor.device), None, multimask_output
    )
    prompt_index = np.repeat(np.arange(len(boxes)), masks_t.shape[1])
    return masks_t.flatten(0, 1).cpu().numpy(), scores_t.flatten().cpu().numpy(), prompt_index


def _predict_texts(
    predictor: SamPredictor,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    texts: Sequence[str],
    multimask_output: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every text with all the points, in one batch."""
    coords_t = labels_t = None
    if coords is not None:
        size = predictor.original_size
        coords_t = predictor.transform.apply_coords_torch(torch.from_numpy(coords), size)
        coords_t = coords_t[None].expand(len(texts), -1, -1).to(predictor.device)
        labels_t = torch.from_numpy(labels)[None].expand(len(texts), -1).to(predictor.device)
    masks_t, scores_t, _ = predictor.predict_torch(
        coords_t, labels_t, None, None, multimask_output, text=list(texts)
    )
    prompt_index = np.repeat(np.arange(len(texts)), masks_t.shape[1])
    return masks_t.flatten(0, 1).cpu().numpy(), scores_t.flatten().cpu().numpy(), prompt_index


def mask_records(masks: np.ndarray, scores: np.ndarray, prompt_index: np.ndarray) -> list[dict]:
    """One JSON-ready record per mask: file name, prompt, score, XYWH bbox, area, COCO RLE."""
    from sam_lightning.ops import rle_area, rle_encode, rle_to_bbox

    rles = rle_encode(torch.from_numpy(masks))
    areas, boxes = rle_area(rles).tolist(), rle_to_bbox(rles).long().tolist()
    records = []
    for i, rle in enumerate(rles):
        records.append({
            "file": f"mask_{i:02d}.png",
            "prompt": int(prompt_index[i]),
            "score": float(scores[i]),
            "bbox": boxes[i],
            "area": areas[i],
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        })
    return records


def _colours(count: int) -> np.ndarray:
    """``count`` distinct saturated RGB colours (hues spread by the golden ratio)."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]).reshape(-1, 3) * 255


def render_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    prompt_index: np.ndarray,
    points: Sequence[Point],
    boxes: Sequence[Box],
    alpha: float = 0.5,
) -> Image.Image:
    """Blends each mask in its own colour over ``image``, outlines the boxes (in the colour
    of their first mask) and draws foreground points green, background points red."""
    colours = _colours(len(masks))
    blended = image.astype(np.float32)
    for mask, colour in zip(masks, colours):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * colour
    overlay = Image.fromarray(blended.round().astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    width = max(2, min(image.shape[:2]) // 200)
    for b, box in enumerate(boxes):
        first = np.flatnonzero(prompt_index == b)
        colour = tuple(int(c) for c in colours[first[0]]) if len(first) else (255, 255, 255)
        draw.rectangle(box, outline=colour, width=width)
    radius = max(4, min(image.shape[:2]) // 80)
    for x, y, label in points:
        fill = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline="white")
    return overlay


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_outputs(
    output_dir: Path, overlay: Image.Image, masks: np.ndarray, document: dict[str, Any]
) -> None:
    """Writes mask PNGs, the overlay and masks.json; removes stale ``mask_*.png`` files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    names = {record["file"] for record in document["masks"]}
    for stale in output_dir.iterdir():
        if _MASK_FILE.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    for record, mask in zip(document["masks"], masks):
        png = _png_bytes(Image.fromarray(mask.astype(np.uint8) * 255))
        write_atomic(output_dir / record["file"], png)
    write_atomic(output_dir / "overlay.png", _png_bytes(overlay))
    write_atomic(output_dir / "masks.json", json.dumps(document, indent=2).encode())


def build_predictor(
    model_type: str,
    checkpoint: str | Path | None,
    device: str,
    image_size: int = 1024,
    clip: str | Path | None = None,
    lora_weights: str | Path | None = None,
) -> SamPredictor:
    """Builds the model (random weights, seeded, when ``checkpoint`` is None) for
    ``image_size`` inputs (the official checkpoints: 1024) and a predictor; with ``clip`` (a
    CLIP directory, :meth:`ClipEncoder.from_pretrained`) the model takes text prompts."""
    from sam_lightning.entry_points import build_model

    text_encoder = None
    if clip is not None:
        from sam_lightning.modeling.text_encoder import ClipEncoder

        text_encoder = ClipEncoder.from_pretrained(clip).to(device)

    model = build_model(
        model_type,
        checkpoint,
        image_size,
        device,
        text_embed_dim=None if text_encoder is None else text_encoder.embed_dim,
        checkpoint_flag="--checkpoint PATH",
        lora_weights=lora_weights,
    )
    return SamPredictor(model, text_encoder=text_encoder)


def segment_image(
    image_path: str | Path,
    output_dir: str | Path,
    points: Sequence[Point] = (),
    boxes: Sequence[Box] = (),
    model_type: str = "vit_b",
    checkpoint: str | Path | None = None,
    multimask_output: bool | None = None,
    device: str = "cpu",
    image_size: int = 1024,
    texts: Sequence[str] = (),
    clip: str | Path | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    lora_weights: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Segments ``image_path`` from XY(label) ``points`` and XYXY ``boxes`` in pixels, or from
    ``texts`` (each with the points; needs ``clip``, the CLIP directory, and a checkpoint
    trained with text prompts) and writes the results to ``output_dir``; returns the mask
    records of masks.json. ``image_size`` is the model's input side (1024 for the official
    checkpoints; a trained checkpoint needs the size it was trained at). An image with more
    than ``max_image_pixels`` pixels (None: no limit) is refused, as one that cannot be read
    (:func:`~sam_lightning.file_io.read_image`). ``lora_weights``: a LoRA adapter file
    (``export --adapter-only``) trained on ``checkpoint``, merged into it.

    ``multimask_output=None`` returns 3 masks for a single point or a text alone and 1
    otherwise. Raises ValueError for invalid prompts or ``image_size``, UnreadableImageError
    (a ValueError) for an unreadable or refused image, FileNotFoundError for a missing one."""
    if not points and not boxes and not texts:
        raise ValueError("give at least one point, box or text prompt")
    if texts and clip is None:
        raise ValueError("text prompts need the CLIP directory (--clip)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
    image = read_image(image_path, max_image_pixels)
    if multimask_output is None:
        multimask_output = (len(points) == 1 and not boxes and not texts) or (
            bool(texts) and not points
        )
    predictor = build_predictor(model_type, checkpoint, device, image_size, clip, lora_weights)
    predictor.set_image(image)
    masks, scores, prompt_index = predict_masks(
        predictor, points, boxes, multimask_output, texts
    )
    document = {
        "image": str(image_path),
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "model_type": model_type,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "lora_weights": None if lora_weights is None else str(lora_weights),
        "points": [list(p) for p in points],
        "boxes": [list(b) for b in boxes],
        "texts": list(texts),
        "masks": mask_records(masks, scores, prompt_index),
    }
    overlay = render_overlay(image, masks, prompt_index, points, boxes)
    write_outputs(Path(output_dir), overlay, masks, document)
    return document["masks"]


def _parse_numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}")
    return values


def parse_point(text: str) -> Point:
    """Parses ``X,Y`` or ``X,Y,LABEL`` (LABEL 1 foreground, the default, or 0 background)."""
    values = _parse_numbers(text, (2, 3), "point (expected X,Y or X,Y,LABEL)")
    label = values[2] if len(values) == 3 else 1
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"invalid point label in {text!r}: must be 0 or 1")
    return values[0], values[1], int(label)


def parse_box(text: str) -> Box:
    """Parses ``X0,Y0,X1,Y1``."""
    x0, y0, x1, y1 = _parse_numbers(text, (4,), "box (expected X0,Y0,X1,Y1)")
    return x0, y0, x1, y1


def parse_positive_int(text: str) -> int:
    """Parses a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def parse_pixel_limit(text: str) -> int | None:
    """Parses ``--max-image-pixels``: a whole number >= 1, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    return parse_positive_int(text)


def output_problem(output: Path) -> str | None:
    """Why ``output`` cannot be the output directory (it or a parent is a file), or None."""
    if output.exists() and not output.is_dir():
        return f"--output {output} is a file, not a directory"
    parent = next((p for p in output.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"--output {output} is inside {parent}, which is a file, not a directory"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m sam_lightning.segment",
        description="Segment an image with SAM from point, box or text prompts.",
    )
    parser.add_argument("image", type=Path, help="image file (PNG, JPEG, ...)")
    parser.add_argument("--point", type=parse_point, action="append", default=[],
                        metavar="X,Y[,LABEL]", help="point prompt in pixels; LABEL 1 (default) "
                        "foreground or 0 background; repeatable")
    parser.add_argument("--box", type=parse_box, action="append", default=[],
                        metavar="X0,Y0,X1,Y1", help="box prompt in pixels; repeatable (several "
                        "boxes are decoded as one batch, each with all points)")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT",
                        help="free-form text prompt (needs --clip and a checkpoint trained with "
                        "text prompts); repeatable (decoded as one batch, each with all points)")
    parser.add_argument("--clip", type=Path, default=None, metavar="DIR",
                        help="CLIP directory in the HuggingFace layout (config.json, "
                        "model.safetensors, vocab.json, merges.txt) for --text")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="vit_b")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"model weights ({OFFICIAL_CHECKPOINTS}); random if omitted")
    parser.add_argument("--lora-weights", type=Path, default=None, metavar="FILE",
                        help="LoRA adapter (.safetensors from export --adapter-only) trained "
                        "on --checkpoint, merged into it")
    parser.add_argument("--image-size", type=parse_positive_int, default=1024,
                        help="model input side: 1024 for the official checkpoints, else the "
                        "size the checkpoint was trained at (e.g. 64 for the demo)")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--max-image-pixels", type=parse_pixel_limit,
                        default=DEFAULT_MAX_IMAGE_PIXELS, metavar="PIXELS|none",
                        help="refuse images with more pixels, Pillow's guard against "
                        "decompression bombs (default: Pillow's %(default)s); none: no limit")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--multimask", dest="multimask", action="store_const", const=True,
                       help="3 masks per prompt (default for a single point)")
    group.add_argument("--single-mask", dest="multimask", action="store_const", const=False,
                       help="1 mask per prompt (default otherwise)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (argparse exits with 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")  # e.g. the random-weights warning
    if not args.point and not args.box and not args.text:
        parser.error("give at least one --point, --box or --text")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"checkpoint file not found: {args.checkpoint}")
    if args.lora_weights is not None and not args.lora_weights.is_file():
        parser.error(f"adapter file not found: {args.lora_weights}")
    if problem := output_problem(args.output):
        parser.error(problem)
    try:
        torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"invalid --device {args.device!r}: {error}")
    from sam_lightning.modeling.checkpoint import CheckpointError

    try:
        records = segment_image(
            args.image, args.output, args.point, args.box, args.model_type,
            args.checkpoint, args.multimask, args.device, args.image_size, args.text, args.clip,
            args.max_image_pixels, args.lora_weights,
        )
    except CheckpointError as error:  # an unreadable checkpoint: one line, without the usage
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except (UnreadableImageError, OSError) as error:  # the image or the output: one line
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except ValueError as error:
        parser.error(str(error))
    for record in records:
        print(f"{args.output / record['file']}: score {record['score']:.3f}, "
              f"area {record['area']}, bbox {record['bbox']}")
    print(f"{args.output / 'overlay.png'}\n{args.output / 'masks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
