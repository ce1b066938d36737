"""NumPy reference implementations of the ``torch.ops.sam_lightning.rle_*`` operators.

Same signatures, results and ``ValueError`` messages as the compiled kernels
(``csrc/rle/``); :mod:`sam_lightning.ops.rle` falls back to them when the extension is not
loaded. Counts strings follow pycocotools' ``maskApi.c``: 5-bit groups, one character each
(value + 48), bit 0x20 = more groups follow, bit 0x10 of the last group = sign, and for
``i > 2`` count ``i`` is stored as a delta against count ``i - 2``.
"""

from __future__ import annotations

import numpy as np
import torch

_MAX_COUNT = 2**32 - 1
_MAX_GROUPS = 7  # 35 bits: enough for any delta of two 32-bit counts


def _dtype_name(tensor: torch.Tensor) -> str:
    """The c10 scalar type name (``Byte``, ``Long``...) that the C++ messages print."""
    return tensor.type().removeprefix("torch.").removesuffix("Tensor")


def _check_offsets(op: str, offsets: torch.Tensor, total: int) -> list[int]:
    if offsets.dim() != 1 or offsets.dtype != torch.int64 or offsets.numel() < 1:
        raise ValueError(
            f"{op}: offsets must be a 1-D int64 tensor of length N + 1, got {offsets.dim()}-D "
            f"{_dtype_name(offsets)} with {offsets.numel()} elements"
        )
    values = offsets.tolist()
    for i, value in enumerate(values):
        if not 0 <= value <= total:
            raise ValueError(f"{op}: offsets[{i}] = {value} is outside [0, {total}]")
        if i > 0 and value < values[i - 1]:
            raise ValueError(
                f"{op}: offsets must be non-decreasing, got offsets[{i - 1}] = {values[i - 1]} "
                f"> offsets[{i}] = {value}"
            )
    return values


def _check_strings(op: str, chars: torch.Tensor, offsets: torch.Tensor) -> list[np.ndarray]:
    if chars.dim() != 1 or chars.dtype != torch.uint8:
        raise ValueError(
            f"{op}: chars must be a 1-D uint8 tensor, got {chars.dim()}-D {_dtype_name(chars)}"
        )
    bounds = _check_offsets(op, offsets, chars.numel())
    data = chars.numpy()
    return [data[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


def _size_problem(h: int, w: int) -> str:
    if h <= 0 or w <= 0:
        return f"invalid size [{h}, {w}]: height and width must be positive"
    if h * w > _MAX_COUNT:
        return f"size [{h}, {w}] has more pixels than 32-bit COCO counts allow ({_MAX_COUNT})"
    return ""


def _check_sizes(op: str, label: str, sizes: torch.Tensor, n: int) -> list[tuple[int, int]]:
    if sizes.dim() != 2 or tuple(sizes.shape) != (n, 2) or sizes.dtype != torch.int64:
        raise ValueError(
            f"{op}: sizes must be an int64 tensor of shape ({n}, 2), got shape "
            f"{list(sizes.shape)} and dtype {_dtype_name(sizes)}"
        )
    pairs = [(int(h), int(w)) for h, w in sizes.tolist()]
    for i, (h, w) in enumerate(pairs):
        if problem := _size_problem(h, w):
            raise ValueError(f"{label} {i}: {problem}")
    return pairs


def _describe_char(code: int) -> str:
    return f"'{chr(code)}' (0x{code:02x})" if 32 <= code < 127 else f"0x{code:02x}"


def _decompress(text: np.ndarray) -> tuple[np.ndarray, str]:
    """Counts of one string and "" or the first problem, in the C++ parser's order."""
    n = len(text)
    bad = np.flatnonzero((text < 48) | (text > 111))
    stop = int(bad[0]) if len(bad) else n  # first character outside the alphabet
    groups = text[:stop].astype(np.int64) - 48
    ends = np.flatnonzero((groups & 0x20) == 0)  # last character of each complete value
    starts = np.concatenate(([0], ends + 1))  # the last start may open an unfinished value
    if starts[-1] == stop:
        starts = starts[:-1]
    lengths = np.append(ends + 1, stop)[: len(starts)] - starts
    too_long = np.flatnonzero(lengths > _MAX_GROUPS)
    overflow_at = int(starts[too_long[0]]) + _MAX_GROUPS if len(too_long) else n
    cut = min(stop, overflow_at)  # the parser reaches this character, then fails
    complete = ends[ends < cut]
    values = np.zeros(len(complete), dtype=np.int64)
    if len(complete):
        first = starts[: len(complete)]
        index_in_value = np.arange(complete[-1] + 1) - np.repeat(first, complete - first + 1)
        values = np.add.reduceat((groups[: complete[-1] + 1] & 0x1F) << (5 * index_in_value), first)
        sign = (groups[complete] & 0x10) != 0
        values -= np.where(sign, np.left_shift(1, 5 * (complete - first + 1)), 0)
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])  # count i = delta + count i - 2 for i > 2
    counts[2::2] = np.cumsum(values[2::2])
    invalid = np.flatnonzero((counts < 0) | (counts > _MAX_COUNT))
    if len(invalid):
        i = int(invalid[0])
        if counts[i] < 0:
            return counts, f"negative count {counts[i]} at index {i} after delta decoding"
        return counts, f"count {counts[i]} at index {i} overflows 32 bits"
    if cut < n:
        if cut == stop:
            return counts, (
                f"invalid character {_describe_char(int(text[stop]))} at position {stop} "
                "(COCO counts use ASCII 48-111, '0'-'o')"
            )
        start = cut - _MAX_GROUPS
        return counts, (
            f"count value starting at position {start} overflows (more than 7 characters)"
        )
    if n and groups[-1] & 0x20:
        return counts, (
            f"truncated counts string: the last character (position {n - 1}) has the "
            "continuation bit set"
        )
    return counts, ""


def _total_problem(counts: np.ndarray, h: int, w: int) -> str:
    total = int(counts.sum())
    if total != h * w:
        return f"counts sum to {total} but size {h}x{w} has {h * w} pixels"
    return ""


def _parse(label: str, i: int, text: np.ndarray, h: int, w: int) -> np.ndarray:
    counts, problem = _decompress(text)
    if not problem:
        problem = _total_problem(counts, h, w)
    if problem:
        raise ValueError(f"{label} {i}: {problem}")
    return counts


def _compress(counts: np.ndarray) -> bytes:
    """Counts string of one RLE (vectorised: up to 7 groups per value)."""
    deltas = counts.astype(np.int64)
    deltas[3:] -= counts[1:-2]
    groups = np.empty((len(deltas), _MAX_GROUPS), dtype=np.int64)
    active = np.ones_like(groups, dtype=bool)
    rest = deltas
    for k in range(_MAX_GROUPS):
        group = rest & 0x1F
        rest = rest >> 5  # arithmetic shift keeps the sign
        more = np.where(group & 0x10, rest != -1, rest != 0)
        groups[:, k] = group | (more.astype(np.int64) << 5)
        if k + 1 < _MAX_GROUPS:
            active[:, k + 1] = active[:, k] & more
    return (groups[active] + 48).astype(np.uint8).tobytes()


def _join(strings: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.tensor(np.cumsum([0, *map(len, strings)]), dtype=torch.int64)
    chars = torch.tensor(np.frombuffer(b"".join(strings), dtype=np.uint8), dtype=torch.uint8)
    return chars, offsets


def _encode(flat: np.ndarray) -> np.ndarray:
    """Counts of a mask given as its column-major pixels (booleans)."""
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        changes = np.concatenate(([0], changes))
    return np.diff(np.concatenate(([0], changes, [flat.size])))


def rle_encode(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if masks.dim() != 3:
        raise ValueError(f"rle_encode: masks must be N x H x W, got {masks.dim()}-D")
    if masks.dtype not in (torch.bool, torch.uint8):
        raise ValueError(f"rle_encode: masks must be bool or uint8, got {_dtype_name(masks)}")
    n, h, w = masks.shape
    if problem := _size_problem(h, w):
        raise ValueError(f"rle_encode: masks of {problem}")
    array = masks.numpy()
    return _join([_compress(_encode(array[i].ravel(order="F") != 0)) for i in range(n)])


def _flat(counts: np.ndarray) -> np.ndarray:
    """Column-major pixels of an RLE as booleans."""
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts)


def rle_decode(chars: torch.Tensor, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    strings = _check_strings("rle_decode", chars, offsets)
    if problem := _size_problem(h, w):
        raise ValueError(f"rle_decode: {problem}")
    masks = np.empty((len(strings), h, w), dtype=np.uint8)
    for i, text in enumerate(strings):
        masks[i] = _flat(_parse("RLE", i, text, h, w)).reshape(w, h).T
    return torch.from_numpy(masks)


def _parse_all(op: str, label: str, chars, offsets, sizes) -> tuple[list, list]:
    strings = _check_strings(op, chars, offsets)
    pairs = _check_sizes(op, label, sizes, len(strings))
    return [_parse(label, i, s, *pairs[i]) for i, s in enumerate(strings)], pairs


def rle_area(chars: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    all_counts, _ = _parse_all("rle_area", "RLE", chars, offsets, sizes)
    return torch.tensor([int(c[1::2].sum()) for c in all_counts], dtype=torch.int64)


def _to_bbox(counts: np.ndarray, h: int, w: int) -> list[float]:
    """pycocotools' rleToBbox: even number of counts, zero-length foreground runs skipped
    (all empty: the initial box [w, h]..[0, 0] wraps in uint32), full height when a
    foreground run crosses a column."""
    m = len(counts) // 2 * 2
    if m == 0:
        return [0.0] * 4
    ends = np.cumsum(counts[:m], dtype=np.int64)
    t = (ends - np.arange(m) % 2)[np.repeat(counts[1:m:2] > 0, 2)]  # first / last pixels
    y, x = t % h, t // h
    full_height = bool(np.any(x[0::2] < x[1::2]))
    xs, xe = min(w, int(x.min(initial=w))), max(0, int(x.max(initial=0)))
    ys, ye = min(h, int(y.min(initial=h))), max(0, int(y.max(initial=0)))
    if full_height:
        ys, ye = 0, h - 1
    return [xs, ys, (xe - xs + 1) & _MAX_COUNT, (ye - ys + 1) & _MAX_COUNT]


def rle_to_bbox(chars: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    all_counts, pairs = _parse_all("rle_to_bbox", "RLE", chars, offsets, sizes)
    boxes = [_to_bbox(c, *hw) for c, hw in zip(all_counts, pairs)]
    return torch.tensor(boxes, dtype=torch.float64).reshape(len(boxes), 4)


def _boxes_overlap(dt: list[float], gt: list[float]) -> bool:
    w = min(dt[2] + dt[0], gt[2] + gt[0]) - max(dt[0], gt[0])
    h = min(dt[3] + dt[1], gt[3] + gt[1]) - max(dt[1], gt[1])
    return w > 0 and h > 0


def _check_same_sizes(label: str, pairs: list, ref_label: str, ref: tuple[int, int]) -> None:
    for i, size in enumerate(pairs):
        if size != ref:
            raise ValueError(
                f"rle_iou: {label} {i} has size {list(size)} but {ref_label} 0 has size {list(ref)}"
            )


def _intersection(a: np.ndarray, b: np.ndarray) -> int:
    """Foreground pixels shared by two RLEs: sum over a's foreground runs of b's coverage."""
    b_ends = np.cumsum(b)
    b_starts = b_ends - b
    b_foreground_before = np.concatenate(([0], np.cumsum(np.where(np.arange(len(b)) % 2, b, 0))))

    def covered(p: np.ndarray) -> np.ndarray:  # b's foreground pixels in [0, p)
        k = np.minimum(np.searchsorted(b_ends, p, side="right"), len(b) - 1)
        inside = np.where(k % 2 == 1, np.clip(p - b_starts[k], 0, b[k]), 0)
        return b_foreground_before[k] + inside

    a_ends = np.cumsum(a)[1::2]
    return int((covered(a_ends) - covered(a_ends - a[1::2])).sum())


def rle_iou(
    dt_chars: torch.Tensor,
    dt_offsets: torch.Tensor,
    dt_sizes: torch.Tensor,
    gt_chars: torch.Tensor,
    gt_offsets: torch.Tensor,
    gt_sizes: torch.Tensor,
    iscrowd: torch.Tensor,
) -> torch.Tensor:
    dt_strings = _check_strings("rle_iou", dt_chars, dt_offsets)
    gt_strings = _check_strings("rle_iou", gt_chars, gt_offsets)
    num_dt, num_gt = len(dt_strings), len(gt_strings)
    if (
        iscrowd.dim() != 1
        or iscrowd.numel() != num_gt
        or iscrowd.dtype
        not in (
            torch.bool,
            torch.uint8,
        )
    ):
        raise ValueError(
            "rle_iou: iscrowd must be a 1-D bool or uint8 tensor with one flag per gt RLE "
            f"({num_gt}), got shape {list(iscrowd.shape)} and dtype {_dtype_name(iscrowd)}"
        )
    dt_pairs = _check_sizes("rle_iou", "dt RLE", dt_sizes, num_dt)
    gt_pairs = _check_sizes("rle_iou", "gt RLE", gt_sizes, num_gt)
    if num_dt and num_gt:
        _check_same_sizes("dt RLE", dt_pairs, "gt RLE", gt_pairs[0])
        _check_same_sizes("gt RLE", gt_pairs, "dt RLE", dt_pairs[0])
    dts = [_parse("dt RLE", i, s, *dt_pairs[i]) for i, s in enumerate(dt_strings)]
    gts = [_parse("gt RLE", i, s, *gt_pairs[i]) for i, s in enumerate(gt_strings)]
    dt_boxes = [_to_bbox(c, *hw) for c, hw in zip(dts, dt_pairs)]
    gt_boxes = [_to_bbox(c, *hw) for c, hw in zip(gts, gt_pairs)]
    crowd = iscrowd.tolist()
    ious = np.zeros((num_dt, num_gt), dtype=np.float64)
    for d, dt in enumerate(dts):
        dt_area = int(dt[1::2].sum())
        for g, gt in enumerate(gts):
            if not _boxes_overlap(dt_boxes[d], gt_boxes[g]):
                continue
            inter = _intersection(dt, gt)
            if inter:
                union = dt_area if crowd[g] else dt_area + int(gt[1::2].sum()) - inter
                ious[d, g] = inter / union
    return torch.from_numpy(ious)


def rle_merge(
    chars: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor, intersect: bool
) -> torch.Tensor:
    strings = _check_strings("rle_merge", chars, offsets)
    if not strings:
        raise ValueError("rle_merge: needs at least one RLE")
    pairs = _check_sizes("rle_merge", "RLE", sizes, len(strings))
    for i, size in enumerate(pairs):
        if size != pairs[0]:
            raise ValueError(
                f"rle_merge: RLE {i} has size {list(size)} but RLE 0 has size {list(pairs[0])}"
            )
    pixels = [_flat(_parse("RLE", i, s, *pairs[i])) for i, s in enumerate(strings)]
    merged = np.logical_and.reduce(pixels) if intersect else np.logical_or.reduce(pixels)
    return _join([_compress(_encode(merged))])[0]


def rle_compress(counts: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if counts.dim() != 1 or counts.dtype != torch.int64:
        raise ValueError(
            f"rle_compress: counts must be a 1-D int64 tensor, got {counts.dim()}-D "
            f"{_dtype_name(counts)}"
        )
    bounds = _check_offsets("rle_compress", offsets, counts.numel())
    values = counts.numpy()
    strings = []
    for i in range(len(bounds) - 1):
        chunk = values[bounds[i] : bounds[i + 1]]
        invalid = np.flatnonzero((chunk < 0) | (chunk > _MAX_COUNT))
        if len(invalid):
            k = int(invalid[0])
            where = f"{chunk[k]} at index {k}"
            raise ValueError(
                f"RLE {i}: negative count {where}"
                if chunk[k] < 0
                else f"RLE {i}: count {where} overflows 32 bits"
            )
        strings.append(_compress(chunk))
    return _join(strings)


def rle_decompress(chars: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    all_counts = []
    for i, text in enumerate(_check_strings("rle_decompress", chars, offsets)):
        counts, problem = _decompress(text)
        if problem:
            raise ValueError(f"RLE {i}: {problem}")
        all_counts.append(counts)
    lengths = np.cumsum([0, *map(len, all_counts)])
    flat = np.concatenate([np.zeros(0, dtype=np.int64), *all_counts])
    return torch.from_numpy(flat), torch.tensor(lengths, dtype=torch.int64)


def rle_select(
    chars: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    strings = _check_strings("rle_select", chars, offsets)
    if index.dim() != 1 or index.dtype != torch.int64:
        raise ValueError(
            f"rle_select: index must be a 1-D int64 tensor, got {index.dim()}-D "
            f"{_dtype_name(index)}"
        )
    picked = index.tolist()
    for i, value in enumerate(picked):
        if not 0 <= value < len(strings):
            raise ValueError(f"rle_select: index[{i}] = {value} is outside [0, {len(strings)})")
    return _join([strings[i].tobytes() for i in picked])
