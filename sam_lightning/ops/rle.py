"""COCO run-length encoding (RLE) of binary masks, compatible with ``pycocotools.mask``.

An RLE is a dict ``{"size": [h, w], "counts": bytes}``: the run lengths of the mask in
column-major order, starting with background, compressed to pycocotools' ASCII string.
``counts`` may also be given as ``str`` (as stored in COCO json files) or as a list of ints
(the uncompressed form of COCO's ``iscrowd`` annotations).

Unlike pycocotools, masks are N x H x W (row-major, any strides) and results are torch
tensors. Every function runs the compiled ``torch.ops.sam_lightning.rle_*`` kernels when the
extension is loaded, else :mod:`sam_lightning.ops._rle_reference` (identical results).
Malformed RLEs raise ``ValueError`` naming the RLE index and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sam_lightning.ops import _rle_reference
from sam_lightning.ops._extension import HAS_EXTENSION

RLE = dict[str, Any]
RLEs = Mapping[str, Any] | Sequence[Mapping[str, Any]]

# The kernels behind the public functions (tests swap in the reference backend).
_KERNELS = torch.ops.sam_lightning if HAS_EXTENSION else _rle_reference
_MAX_COUNT = 2**32 - 1


def _as_masks(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(masks, np.ndarray):
        if any(stride < 0 for stride in masks.strides):  # torch.from_numpy refuses these
            masks = np.ascontiguousarray(masks)
        masks = torch.from_numpy(masks)
    elif not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be a torch.Tensor or numpy.ndarray, got {type(masks)}")
    if masks.dim() not in (2, 3):
        raise ValueError(f"masks must be H x W or N x H x W, got shape {list(masks.shape)}")
    masks = masks.cpu()
    return masks.unsqueeze(0) if masks.dim() == 2 else masks


def _unpack(chars: torch.Tensor, offsets: torch.Tensor) -> list[bytes]:
    data = chars.numpy().tobytes()
    bounds = offsets.tolist()
    return [data[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


def _chars(data: bytes) -> torch.Tensor:
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


_ARRAY_LIKE = (list, tuple, np.ndarray, torch.Tensor)


def _int_array(value: Any) -> np.ndarray | None:
    """``value`` as an integer NumPy array, or None if it is not an array of ints."""
    if not isinstance(value, _ARRAY_LIKE):
        return None
    try:
        array = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
    except (ValueError, TypeError):  # ragged or mixed
        return None
    if array.size == 0:
        array = array.astype(np.int64)
    return array if array.dtype.kind in "iu" else None


def _size(label: str, i: int, size: Any) -> list[int]:
    if type(size) in (list, tuple) and len(size) == 2 and type(size[0]) is type(size[1]) is int:
        return list(size)  # the common case, without NumPy
    array = _int_array(size)
    if array is None or array.shape != (2,):
        raise ValueError(f"{label} {i}: 'size' must be [height, width], got {size!r}")
    return [int(v) for v in array]


def _uncompressed(where: str, counts: Any) -> np.ndarray:
    """Validated run lengths; ``where`` names them in messages."""
    array = _int_array(counts)
    if array is None or array.ndim != 1:
        raise ValueError(f"{where} must be a 1-D sequence of ints, got {counts!r:.80}")
    bad = np.flatnonzero((array < 0) | (array > _MAX_COUNT))
    if len(bad):
        k = int(bad[0])
        problem = "is negative" if array[k] < 0 else "overflows 32 bits"
        raise ValueError(f"{where}[{k}] = {array[k]} {problem}")
    return array.astype(np.int64)


def _counts_bytes(where: str, counts: Any) -> bytes | np.ndarray:
    """Compressed counts as bytes, or uncompressed counts as an int64 array."""
    if type(counts) is bytes:
        return counts
    if isinstance(counts, (bytearray, memoryview)):
        return bytes(counts)
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{where} has a non-ASCII character at position {error.start}"
            ) from None
    if isinstance(counts, _ARRAY_LIKE):
        return _uncompressed(where, counts)
    raise ValueError(f"{where} must be bytes, str or a list of ints, got {type(counts)}")


def _compress_many(counts: list[np.ndarray]) -> list[bytes]:
    offsets = torch.tensor(np.cumsum([0, *map(len, counts)]), dtype=torch.int64)
    flat = torch.from_numpy(np.concatenate([np.zeros(0, dtype=np.int64), *counts]))
    return _unpack(*_KERNELS.rle_compress(flat, offsets))


def _fields(label: str, i: int, rle: Any) -> tuple[Any, Any]:
    """The 'size' and 'counts' of one RLE dict."""
    if type(rle) is not dict and not isinstance(rle, Mapping):
        raise ValueError(f"{label} {i}: expected a dict with 'size' and 'counts', got {type(rle)}")
    for field in ("size", "counts"):
        if field not in rle:
            raise ValueError(f"{label} {i}: missing '{field}'")
    return rle["size"], rle["counts"]


def _pack(rles: RLEs, label: str = "RLE") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates dicts and packs them as (chars, offsets, sizes) for the kernels."""
    items = [rles] if isinstance(rles, Mapping) else rles
    sizes, strings = [], []
    for i, rle in enumerate(items):
        size, counts = _fields(label, i, rle)
        sizes.append(_size(label, i, size))
        strings.append(_counts_bytes(f"{label} {i}: 'counts'", counts))
    raw = [i for i, s in enumerate(strings) if isinstance(s, np.ndarray)]
    if raw:
        for i, text in zip(raw, _compress_many([strings[i] for i in raw])):
            strings[i] = text
    offsets = torch.from_numpy(np.cumsum([0, *map(len, strings)], dtype=np.int64))
    size_tensor = torch.tensor(sizes, dtype=torch.int64).reshape(len(sizes), 2)
    return _chars(b"".join(strings)), offsets, size_tensor


def rle_encode(masks: torch.Tensor | np.ndarray) -> list[RLE]:
    """Encodes N x H x W (or H x W) bool/uint8 masks to COCO RLEs.

    Nonzero pixels are foreground. pycocotools starts a new run at every change of value,
    so its output for masks holding values other than 0 and 1 is not a valid RLE; here any
    nonzero value counts as 1. Strides are free: row-major, pycocotools' Fortran layout
    (``torch.from_numpy(fortran_hwn).permute(2, 0, 1)``), slices and transposed views are
    encoded without copying.
    """
    masks = _as_masks(masks)
    h, w = int(masks.shape[1]), int(masks.shape[2])
    strings = _unpack(*_KERNELS.rle_encode(masks))
    return [{"size": [h, w], "counts": counts} for counts in strings]


def rle_decode(rles: RLEs) -> torch.Tensor:
    """Decodes RLEs of one size to an N x H x W row-major uint8 tensor of 0/1.

    A single dict gives 1 x H x W; an empty list gives a 0 x 0 x 0 tensor.
    """
    chars, offsets, sizes = _pack(rles)
    if len(sizes) == 0:
        return torch.zeros((0, 0, 0), dtype=torch.uint8)
    pairs = sizes.tolist()
    for i, size in enumerate(pairs):
        if problem := _rle_reference._size_problem(*size):
            raise ValueError(f"RLE {i}: {problem}")
    for i, size in enumerate(pairs):
        if size != pairs[0]:
            raise ValueError(
                f"rle_decode: RLE {i} has size {size} but RLE 0 has size {pairs[0]}; "
                "decode RLEs of different sizes separately"
            )
    h, w = pairs[0]
    return _KERNELS.rle_decode(chars, offsets, h, w)


def rle_area(rles: RLEs) -> torch.Tensor:
    """Foreground pixel count of each RLE: int64 tensor (N,)."""
    return _KERNELS.rle_area(*_pack(rles))


def rle_to_bbox(rles: RLEs) -> torch.Tensor:
    """Bounding boxes [x, y, width, height] as pycocotools' ``toBbox``: float64 (N, 4).

    pycocotools' quirks are kept for identical results: a foreground run that crosses a
    column boundary makes the box full-height.
    """
    return _KERNELS.rle_to_bbox(*_pack(rles))


def rle_iou(
    dt: RLEs,
    gt: RLEs,
    iscrowd: Sequence[bool | int] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """IoU of every (dt, gt) pair as pycocotools' ``iou``: float64 (len(dt), len(gt)).

    For a crowd gt (``iscrowd[g]`` true) the union is replaced by the dt area. All RLEs
    must share one size (pycocotools silently returns 0 or -1 instead).
    """
    dt_packed = _pack(dt, "dt RLE")
    gt_packed = _pack(gt, "gt RLE")
    num_gt = len(gt_packed[2])
    flags = np.zeros(num_gt) if iscrowd is None else np.asarray(iscrowd)
    crowd = torch.from_numpy((flags != 0).astype(np.uint8).reshape(flags.shape))
    return _KERNELS.rle_iou(*dt_packed, *gt_packed, crowd)


def rle_merge(rles: Sequence[Mapping[str, Any]], intersect: bool = False) -> RLE:
    """Union (or intersection) of one or more RLEs of one size, as pycocotools' ``merge``."""
    chars, offsets, sizes = _pack(rles)
    merged = _KERNELS.rle_merge(chars, offsets, sizes, bool(intersect))  # raises if empty
    return {"size": sizes[0].tolist(), "counts": merged.numpy().tobytes()}


def rle_compress(counts: Sequence[int] | np.ndarray | torch.Tensor) -> bytes:
    """Compresses run lengths (column-major, starting with background) to a counts string."""
    return _compress_many([_uncompressed("counts", counts)])[0]


def rle_decompress(counts: bytes | str) -> list[int]:
    """Run lengths of a counts string (no size check: that needs the RLE's size)."""
    if not isinstance(counts, (bytes, bytearray, memoryview, str)):
        raise ValueError(f"counts must be bytes or str, got {type(counts)}")
    text = _counts_bytes("counts", counts)
    values, _ = _KERNELS.rle_decompress(_chars(text), torch.tensor([0, len(text)]))
    return values.tolist()
