"""The Berkeley Segmentation Data Set (BSDS500) in its official layout.

``<root>/images/<split>/<name>.jpg`` and ``<root>/groundTruth/<split>/<name>.mat`` for the
splits ``train``, ``val`` and ``test``. Each ``.mat`` file holds a MATLAB cell array
``groundTruth`` with one struct per annotator (usually 5, between 4 and 9), whose fields are
``Segmentation`` (region labels) and ``Boundaries`` (the region boundaries, one pixel wide).
The files are read with ``scipy.io.loadmat``; malformed ones raise :class:`BSDSFormatError`
naming the file and the field.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_lightning.file_io import read_image

SPLITS = ("train", "val", "test")
_FIELDS = ("Segmentation", "Boundaries")


class BSDSFormatError(ValueError):
    """A malformed BSDS ground-truth file.

    Attributes:
        file: the ``.mat`` file.
        field: where in it, MATLAB style, e.g. ``"groundTruth{2}.Boundaries"``.
        problem: what is wrong.
    """

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str) -> None:
        self.file, self.field, self.problem = str(file), field, problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


@dataclass(frozen=True)
class BSDSGroundTruth:
    """The annotations of one image: ``boundaries`` (bool) and ``segmentations`` (int64),
    both ``annotators x H x W``."""

    boundaries: np.ndarray
    segmentations: np.ndarray


@dataclass(frozen=True)
class BSDSSample:
    """One image of :class:`BSDS500Dataset`: its name (the file stem), the ``H x W x 3``
    uint8 RGB image and its ground truth."""

    name: str
    image: np.ndarray
    ground_truth: BSDSGroundTruth


def boundaries_from_segmentation(segmentation: np.ndarray) -> np.ndarray:
    """The boundary map of a label image as the BSDS ``seg2bmap`` draws it (same size):
    a pixel is on a boundary when its right, lower or lower-right neighbour has another
    label (the last row compares with the right neighbour only, the last column with the
    lower one, the corner is never a boundary). ``H x W`` bool."""
    seg = np.asarray(segmentation)
    if seg.ndim != 2:
        raise ValueError(f"segmentation must be H x W, got shape {list(seg.shape)}")
    out = np.zeros(seg.shape, dtype=bool)
    inner = seg[:-1, :-1]
    out[:-1, :-1] = (inner != seg[:-1, 1:]) | (inner != seg[1:, :-1]) | (inner != seg[1:, 1:])
    out[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]
    out[:-1, -1] = seg[:-1, -1] != seg[1:, -1]
    return out


def _field(file: Path, struct: object, index: int, name: str) -> np.ndarray:
    where = f"groundTruth{{{index + 1}}}"
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or struct.size != 1:
        raise BSDSFormatError(file, where, "must be a struct with Segmentation and Boundaries")
    if name not in struct.dtype.names:
        raise BSDSFormatError(file, f"{where}.{name}", "missing")
    value = struct[name].reshape(-1)[0]
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.size == 0:
        shape = list(getattr(value, "shape", []))
        raise BSDSFormatError(file, f"{where}.{name}", f"must be a 2-D array, got shape {shape}")
    if value.dtype.kind not in "biuf":
        raise BSDSFormatError(file, f"{where}.{name}", f"must be numeric, got {value.dtype}")
    if value.dtype.kind == "f" and not np.array_equal(value, np.round(value)):
        raise BSDSFormatError(file, f"{where}.{name}", "must hold integers")
    if name == "Boundaries" and not np.isin(value, (0, 1)).all():
        raise BSDSFormatError(file, f"{where}.{name}", "must hold only 0 and 1")
    return value


def read_ground_truth(path: str | os.PathLike[str]) -> BSDSGroundTruth:
    """Reads a BSDS ``groundTruth`` ``.mat`` file. Raises FileNotFoundError if it is missing
    and :class:`BSDSFormatError` if it is not a ``groundTruth`` cell array of structs with
    ``Segmentation`` and ``Boundaries`` of one size."""
    from scipy.io import loadmat  # optional dependency, needed only for BSDS

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BSDS ground truth not found: {path}")
    try:
        mat = loadmat(str(path))
    except (ValueError, TypeError, OSError, NotImplementedError) as error:
        raise BSDSFormatError(path, "", f"not a readable MATLAB .mat file ({error})") from None
    if "groundTruth" not in mat:
        raise BSDSFormatError(path, "groundTruth", "missing")
    cells = mat["groundTruth"]
    if not isinstance(cells, np.ndarray) or cells.dtype != object:
        raise BSDSFormatError(path, "groundTruth", "must be a cell array of structs")
    cells = cells.reshape(-1)
    if cells.size == 0:
        raise BSDSFormatError(path, "groundTruth", "has no annotators")
    boundaries, segmentations = [], []
    for index, struct in enumerate(cells):
        segmentations.append(_field(path, struct, index, "Segmentation").astype(np.int64))
        boundaries.append(_field(path, struct, index, "Boundaries").astype(bool))
        for name, value in zip(_FIELDS, (segmentations[-1], boundaries[-1])):
            if value.shape != segmentations[0].shape:
                raise BSDSFormatError(
                    path,
                    f"groundTruth{{{index + 1}}}.{name}",
                    f"is {value.shape[0]} x {value.shape[1]} but groundTruth{{1}}.Segmentation "
                    f"is {segmentations[0].shape[0]} x {segmentations[0].shape[1]}",
                )
    return BSDSGroundTruth(np.stack(boundaries), np.stack(segmentations))


def write_ground_truth(
    path: str | os.PathLike[str],
    segmentations: np.ndarray,
    boundaries: np.ndarray | None = None,
) -> None:
    """Writes a ``groundTruth`` ``.mat`` file in the official layout: a 1 x A cell array of
    structs with ``Segmentation`` (uint16) and ``Boundaries`` (logical). ``segmentations``
    and ``boundaries`` are ``A x H x W``; boundaries default to
    :func:`boundaries_from_segmentation` of each segmentation."""
    from scipy.io import savemat

    segmentations = np.asarray(segmentations)
    if segmentations.ndim != 3 or segmentations.shape[0] == 0:
        raise ValueError(f"segmentations must be A x H x W, got shape {list(segmentations.shape)}")
    if boundaries is None:
        boundaries = np.stack([boundaries_from_segmentation(s) for s in segmentations])
    boundaries = np.asarray(boundaries)
    if boundaries.shape != segmentations.shape:
        raise ValueError(
            f"boundaries must have the segmentations' shape {list(segmentations.shape)}, got "
            f"{list(boundaries.shape)}"
        )
    cells = np.empty((1, len(segmentations)), dtype=object)
    for a, (seg, bnd) in enumerate(zip(segmentations, boundaries)):
        cells[0, a] = {"Segmentation": seg.astype(np.uint16), "Boundaries": bnd.astype(bool)}
    savemat(str(path), {"groundTruth": cells})


class BSDS500Dataset(Sequence):
    """The images and ground truth of one BSDS500 split, in file-name order.

    Args:
        root: the directory holding ``images/`` and ``groundTruth/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        limit: keep only the first ``limit`` images (None: all).

    The images are those with a ground-truth file (``groundTruth/<split>/*.mat``); a
    missing ``images/<split>/<name>.jpg`` raises FileNotFoundError when it is read.
    """

    def __init__(
        self, root: str | os.PathLike[str], split: str = "test", limit: int | None = None
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / "images" / split
        self.ground_truth_dir = self.root / "groundTruth" / split
        for directory in (self.image_dir, self.ground_truth_dir):
            if not directory.is_dir():
                raise FileNotFoundError(f"BSDS500 directory not found: {directory}")
        self.names = sorted(p.stem for p in self.ground_truth_dir.glob("*.mat"))[:limit]
        if not self.names:
            raise FileNotFoundError(f"no ground-truth .mat files in {self.ground_truth_dir}")

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.names[index]}.jpg"

    def ground_truth_path(self, index: int) -> Path:
        return self.ground_truth_dir / f"{self.names[index]}.mat"

    def ground_truth(self, index: int) -> BSDSGroundTruth:
        """The annotations of image ``index`` (the image itself is not read)."""
        return read_ground_truth(self.ground_truth_path(index))

    def __getitem__(self, index: int) -> BSDSSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        ground_truth = self.ground_truth(index)
        path = self.image_path(index)
        image = read_image(path)
        if image.shape[:2] != ground_truth.boundaries.shape[1:]:
            h, w = ground_truth.boundaries.shape[1:]
            raise BSDSFormatError(
                self.ground_truth_path(index),
                "groundTruth{1}.Segmentation",
                f"is {h} x {w} but the image {path} is {image.shape[0]} x {image.shape[1]}",
            )
        return BSDSSample(self.names[index], image, ground_truth)
