"""Datasets and annotation files.

:mod:`sam_lightning.data.sa1b`: the SA-1B layout (one JSON file of RLE masks per image),
read by :class:`SA1BDataset` from directories, the extracted release or its ``.tar``
archives, and written by the data engine (``python -m sam_lightning.amg``).
:mod:`sam_lightning.data.coco`: COCO-format instance annotations (:class:`CocoDataset`) and
LVIS v1 (:class:`LvisDataset`) as training data.
"""

from sam_lightning.data.coco import CocoDataset, LvisDataset
from sam_lightning.data.sa1b import (
    SA1BFormatError,
    SA1BSample,
    annotation_id,
    make_sa1b_document,
    read_sa1b_json,
    sa1b_image_id,
    validate_sa1b_document,
    write_sa1b_json,
)
from sam_lightning.data.sa1b_dataset import SA1BDataset, decode_masks
from sam_lightning.file_io import UnreadableImageError, decode_image, read_image

__all__ = [
    "CocoDataset",
    "LvisDataset",
    "SA1BDataset",
    "SA1BFormatError",
    "SA1BSample",
    "UnreadableImageError",
    "annotation_id",
    "decode_image",
    "decode_masks",
    "make_sa1b_document",
    "read_image",
    "read_sa1b_json",
    "sa1b_image_id",
    "validate_sa1b_document",
    "write_sa1b_json",
]
