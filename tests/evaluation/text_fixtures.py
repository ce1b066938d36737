"""Generated data for the text-to-mask tests: COCO / LVIS instance files and a RefCOCO layout
(refer toolkit: ``refs(unc).p`` pickled as plain dicts, ``instances.json``, train2014 PNGs),
painted scenes where every object has its name's colour, and :class:`ColourPredictor`, a
stand-in for a text-enabled SamPredictor that segments a text by the colour it names."""

from __future__ import annotations

import json
import os
import pickle
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_api

#: The names of the COCO / LVIS fixtures' categories (LVIS spells them with ``_``).
NAMES = {1: "traffic_light", 2: "dog", 3: "teddy_bear"}
#: The colour every object of a category (or, for RefCOCO, named in a sentence) is painted.
COLOURS = {
    "traffic light": (250, 20, 20),
    "traffic_light": (250, 20, 20),
    "dog": (20, 250, 20),
    "teddy bear": (20, 20, 250),
    "teddy_bear": (20, 20, 250),
    "red": (250, 20, 20),
    "green": (20, 250, 20),
    "blue": (20, 20, 250),
}


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A compressed RLE with ``str`` counts, as COCO files store it."""
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (crowd regions): column-major runs starting with background."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def polygon(y0: int, y1: int, x0: int, x1: int) -> list[list[float]]:
    """The rectangle ``[y0, y1) × [x0, x1)`` as a COCO polygon."""
    return [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]


def paint(height: int, width: int, regions: list[tuple[np.ndarray, str]], seed: int) -> np.ndarray:
    """Grey noise (no fixture colour) with each mask painted in its colour, in order."""
    image = np.random.default_rng(seed).integers(90, 140, (height, width, 3), dtype=np.uint8)
    for mask, colour in regions:
        image[mask] = COLOURS[colour]
    return image


def write_coco_text(root: Path, lvis: bool = False) -> Path:
    """Four images in ``root/val/`` with COCO-format (or LVIS) instances; returns the file.

    Image 1: two separate traffic lights (a polygon and an RLE: one query, their union) and a
    small dog. Image 2: two overlapping dogs and an empty teddy bear (its query is empty).
    Image 3: a teddy bear and a dog region that is a crowd (COCO, an uncompressed RLE) or,
    for LVIS, a dog the image lists as not exhaustively annotated. Image 4: a crowd of
    dogs only (COCO) or a traffic light (LVIS). The COCO file keeps LVIS's ``_`` names."""
    h, w = 64, 80
    crowd = not lvis
    scenes: list[list[tuple[Any, np.ndarray, int, int]]] = [
        [
            ("polygon", box(h, w, 5, 25, 5, 25), 1, 0),
            ("rle", box(h, w, 30, 60, 50, 78), 1, 0),
            ("rle", box(h, w, 40, 46, 10, 16), 2, 0),
        ],
        [
            ("polygon", box(h, w, 10, 50, 10, 50), 2, 0),
            ("rle", box(h, w, 30, 60, 30, 70), 2, 0),
            ("rle", np.zeros((h, w), dtype=bool), 3, 0),
        ],
        [
            ("rle", box(h, w, 0, 40, 0, 40), 3, 0),
            ("crowd" if crowd else "rle", box(h, w, 45, 64, 20, 80), 2, int(crowd)),
        ],
        [("crowd", box(h, w, 10, 60, 10, 70), 2, 1)]
        if crowd
        else [("polygon", box(h, w, 8, 30, 8, 40), 1, 0)],
    ]
    (root / "val").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, objects in enumerate(scenes, start=1):
        regions = [(mask, NAMES[category]) for _, mask, category, _ in objects]
        Image.fromarray(paint(h, w, regions, seed=i)).save(root / "val" / f"{i:03d}.png")
        name = (
            {"coco_url": f"http://x.org/val/{i:03d}.png"}
            if lvis
            else {"file_name": f"val/{i:03d}.png"}
        )
        info = {"id": 10 * i, "width": w, "height": h, **name}
        if lvis:
            info["not_exhaustive_category_ids"] = [2] if i == 3 else []
        images.append(info)
        for kind, mask, category, is_crowd in objects:
            if kind == "polygon":
                ys, xs = np.nonzero(mask)
                segmentation: Any = polygon(ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
            else:
                segmentation = uncompressed(mask) if kind == "crowd" else encode(mask)
            ann = {
                "id": 100 + len(annotations),
                "image_id": 10 * i,
                "category_id": category,
                "segmentation": segmentation,
                "area": float(mask.sum()),
            }
            if not lvis:
                ann["iscrowd"] = is_crowd
            annotations.append(ann)
    categories = [{"id": c, "name": name} for c, name in NAMES.items()]
    document = {"images": images, "annotations": annotations, "categories": categories}
    path = root / ("lvis.json" if lvis else "instances.json")
    path.write_text(json.dumps(document))
    return path


# ---------------------------------------------------------------------------- RefCOCO

#: (image, [(ref_id, split, box or None for an empty mask, sentences)]) of the fixture.
REFCOCO_SCENES = [
    (
        1,
        [
            (0, "val", (5, 30, 5, 30), ["the red box", "red thing top left"]),
            (1, "val", (35, 60, 40, 78), ["green block on the right"]),
            (2, "testA", (2, 20, 50, 75), ["blue one", "small blue", "the blue box up there"]),
        ],
    ),
    (2, [(3, "train", (10, 40, 10, 40), ["a red square"])]),
    (
        3,
        [
            (4, "val", (20, 50, 0, 40), ["the blue region"]),
            (5, "val", None, ["nothing at all", "an empty mask"]),  # degenerate: skipped
            (6, "testB", (0, 15, 0, 80), ["green strip"]),
        ],
    ),
]
REFCOCO_COLOURS = ("red", "green", "blue")


def _colour_of(sentence: str) -> str | None:
    return next((c for c in REFCOCO_COLOURS if c in sentence), None)


def write_refcoco(
    root: Path, dataset: str = "refcoco", split_by: str = "unc", protocol: int = 2
) -> Path:
    """The refer toolkit's layout under ``root``: ``<dataset>/refs(<split_by>).p`` (a pickle
    of plain dicts, ``protocol`` 0 and 2 being what Python 2's toolkit wrote),
    ``<dataset>/instances.json`` and the images in ``images/mscoco/images/train2014/``.
    Polygons and RLEs; ref 5 points at an annotation with an empty mask; sentence ids run
    over all refs. Returns ``root``."""
    h, w = 64, 80
    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    sent_id = 0
    for image_id, objects in REFCOCO_SCENES:
        name = f"COCO_train2014_{image_id:012d}.png"
        regions = []
        for ref_id, split, extent, sentences in objects:
            mask = np.zeros((h, w), dtype=bool) if extent is None else box(h, w, *extent)
            if colour := _colour_of(sentences[0]):
                regions.append((mask, colour))
            ann_id = 1000 + ref_id
            segmentation = encode(mask) if extent is None or ref_id % 2 else polygon(*extent)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1 + ref_id % 3,
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "bbox": [0.0, 0.0, 1.0, 1.0],
                }
            )
            entries = []
            for text in sentences:
                entries.append(
                    {"tokens": text.split(), "raw": text, "sent_id": sent_id, "sent": text}
                )
                sent_id += 1
            refs.append(
                {
                    "sent_ids": [s["sent_id"] for s in entries],
                    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                    "ann_id": ann_id,
                    "ref_id": ref_id,
                    "image_id": image_id,
                    "split": split,
                    "sentences": entries,
                    "category_id": 1 + ref_id % 3,
                }
            )
        Image.fromarray(paint(h, w, regions, seed=image_id)).save(images_dir / name)
        images.append({"id": image_id, "width": w, "height": h, "file_name": name})
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    categories = [{"id": c, "name": n} for c, n in NAMES.items()]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(document))
    return root


class _Exploit:
    """Pickles as a call of ``os.system`` that creates ``sentinel``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch '{self.sentinel}'",)


def malicious_refs(sentinel: Path) -> bytes:
    """A refs pickle whose loading by ``pickle.load`` would run ``touch sentinel``."""
    ref = {"ref_id": 0, "ann_id": 1, "image_id": 1, "split": "val", "sentences": []}
    ref["sentences"] = [{"sent": "x", "sent_id": _Exploit(sentinel)}]
    return pickle.dumps([ref], protocol=2)


# ------------------------------------------------------------------- stand-in predictor


class ColourPredictor:
    """The methods of a text-enabled SamPredictor that the harness uses. For each text, its 3
    masks are the pixels of the colour it names (:data:`COLOURS`, the longest name found in
    the text; none: an empty mask), that mask shifted by 3 pixels, and its top half; the
    scores come from a hash of the text and the image size, so the most confident mask
    differs between queries. Records every batch of texts in :attr:`calls`."""

    def __init__(self, colours: Mapping[str, tuple[int, int, int]] = COLOURS) -> None:
        self.colours = colours
        self.calls: list[list[str]] = []
        self.reset_image()

    def set_image(self, image: np.ndarray) -> None:
        self.image = image
        self.original_size = tuple(image.shape[:2])

    def reset_image(self) -> None:
        self.image, self.original_size = None, None

    def masks_of(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``3×H×W`` bool masks and ``3`` scores of ``text`` on the set image."""
        names = [name for name in self.colours if name in text]
        h, w = self.original_size
        exact = np.zeros((h, w), dtype=bool)
        if names:
            colour = self.colours[max(names, key=len)]
            exact = (self.image == np.array(colour, dtype=np.uint8)).all(-1)
        shifted = np.roll(exact, (3, 3), axis=(0, 1))
        half = exact.copy()
        half[h // 2 :] = False
        seed = zlib.crc32(f"{text}|{h}x{w}|{int(exact.sum())}".encode())
        scores = np.random.default_rng(seed).random(3)
        return np.stack([exact, shifted, half]), scores

    def predict_torch(
        self,
        point_coords: Any,
        point_labels: Any,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert point_coords is None and point_labels is None and boxes is None
        assert mask_input is None and multimask_output and not return_logits
        assert text and all(isinstance(t, str) for t in text)
        self.calls.append(list(text))
        masks, scores = zip(*(self.masks_of(t) for t in text))
        low_res = torch.zeros(len(text), 3, 4, 4)
        return torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(scores)), low_res
