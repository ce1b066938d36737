"""Images for the image-input tests: 16-bit arrays, OpenCV's reading, PNG headers that
declare huge sizes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

KEEP_ALL = {
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


def opencv_rgb(path: Path) -> np.ndarray:
    """What ``cv2.imread(path, IMREAD_COLOR)`` gives, in RGB order."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image[..., ::-1]


def sixteen_bit(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint16 samples with the values where a wrong 16 -> 8 bit rule shows."""
    values = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    values.reshape(-1)[:6] = [0, 255, 256, 32767, 32768, 65535]
    return values


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey pixels and whose data is one
    byte short of anything: Pillow opens it (reads the size), decoding it fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )
