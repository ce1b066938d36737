"""NumPy reference implementations of the edge operators.

Same signatures, results and ``ValueError`` messages as the compiled kernels
(``csrc/edges/``); :mod:`sam_lightning.ops.edges` falls back to them when the extension is
not loaded. Thinning and edge NMS are vectorised; the boundary matching loops over pixels in
Python (its greedy and Hopcroft-Karp steps are sequential), so it is slow on large maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sam_lightning.ops._postprocess_reference import dtype_name

_BINARY = (torch.bool, torch.uint8)
_FLOATING = (torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1
_EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps
_INF = 2**31 - 1


def _check_dtype(op: str, arg: str, tensor: torch.Tensor, allowed, expected: str) -> None:
    if tensor.dtype not in allowed:
        raise ValueError(f"{op}: {arg} must be {expected}, got {dtype_name(tensor.dtype)}")


def _check_binary(op: str, arg: str, tensor: torch.Tensor) -> None:
    _check_dtype(op, arg, tensor, _BINARY, "a bool or uint8 tensor")


def _check_floating(op: str, arg: str, tensor: torch.Tensor) -> None:
    _check_dtype(op, arg, tensor, _FLOATING, "a float32 or float64 tensor")


def _check_finite(op: str, arg: str, tensor: torch.Tensor) -> None:
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{op}: {arg} must hold finite values")


def _check_pixels(op: str, arg: str, h: int, w: int) -> None:
    if h * w > _INT32_MAX:
        raise ValueError(f"{op}: {arg} must have at most {_INT32_MAX} pixels, got {h} x {w}")


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in tensor.shape) + "]"


# ---- thinning ----------------------------------------------------------------------------


def _guo_hall_deletes(code: int, subiteration: int) -> bool:
    """Conditions G1, G2 and G3 (or G3') of Guo and Hall; bit i - 1 of ``code`` is x_i."""

    def x(i: int) -> int:
        return (code >> ((i - 1) % 8)) & 1

    crossings = sum(1 for k in range(1, 5) if not x(2 * k - 1) and (x(2 * k) or x(2 * k + 1)))
    n1 = sum(1 for k in range(1, 5) if x(2 * k - 1) or x(2 * k))
    n2 = sum(1 for k in range(1, 5) if x(2 * k) or x(2 * k + 1))
    if subiteration == 0:
        g3 = not ((x(2) or x(3) or not x(8)) and x(1))
    else:
        g3 = not ((x(6) or x(7) or not x(4)) and x(5))
    return crossings == 1 and 2 <= min(n1, n2) <= 3 and g3


_TABLES = np.array([[_guo_hall_deletes(c, s) for c in range(256)] for s in range(2)])
# (dy, dx) of neighbour bits 0..7: east, then counter-clockwise.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _codes(padded: np.ndarray) -> np.ndarray:
    h, w = padded.shape[-2] - 2, padded.shape[-1] - 2
    code = np.zeros(padded.shape[:-2] + (h, w), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] << bit
    return code


def _thin_numpy(masks: np.ndarray) -> np.ndarray:
    """Thins ``[..., H, W]`` 0/1 uint8 maps; every map until none changes."""
    padded = np.pad(masks, [(0, 0)] * (masks.ndim - 2) + [(1, 1), (1, 1)])
    inner = padded[..., 1:-1, 1:-1]
    changed = True
    while changed:
        changed = False
        for table in _TABLES:
            delete = table[_codes(padded)] & (inner != 0)
            if delete.any():
                inner[delete] = 0
                changed = True
    return inner.astype(bool)


def thin(masks: torch.Tensor) -> torch.Tensor:
    op = "thin"
    _check_binary(op, "masks", masks)
    if masks.dim() not in (2, 3):
        raise ValueError(f"{op}: masks must be H x W or N x H x W, got {masks.dim()}-D")
    h, w = masks.shape[-2:]
    _check_pixels(op, "masks", h + 2, w + 2)
    if masks.numel() == 0:
        return torch.zeros(masks.shape, dtype=torch.bool)
    binary = (masks.numpy() != 0).astype(np.uint8)
    return torch.from_numpy(_thin_numpy(binary))


# ---- edge NMS ----------------------------------------------------------------------------


def _interpolate(e: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear values of ``e`` at (x, y), clamped as edgesNmsMex (in e's precision)."""
    h, w = e.shape
    dtype = e.dtype.type
    x_max, y_max = w - 1.001, h - 1.001
    x = np.where(x < 0, dtype(0), np.where(x.astype(np.float64) > x_max, dtype(x_max), x))
    y = np.where(y < 0, dtype(0), np.where(y.astype(np.float64) > y_max, dtype(y_max), y))
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    dx0, dy0 = x - x0.astype(e.dtype), y - y0.astype(e.dtype)
    dx1, dy1 = dtype(1) - dx0, dtype(1) - dy0
    return (
        e[y0, x0] * dx1 * dy1
        + e[y0, x0 + 1] * dx0 * dy1
        + e[y0 + 1, x0] * dx1 * dy0
        + e[y0 + 1, x0 + 1] * dx0 * dy0
    )


def _libm(function, values: np.ndarray) -> np.ndarray:
    # math.cos/sin are the C library's, as the kernel's std::cos/sin (NumPy may use others).
    flat = values.astype(np.float64).ravel().tolist()
    return np.fromiter(map(function, flat), np.float64, len(flat)).reshape(values.shape)


def edge_nms(
    edges: torch.Tensor, orientation: torch.Tensor, radius: int, border: int, multiplier: float
) -> torch.Tensor:
    op = "edge_nms"
    _check_floating(op, "edges", edges)
    _check_floating(op, "orientation", orientation)
    if edges.dim() != 2:
        raise ValueError(f"{op}: edges must be H x W, got {edges.dim()}-D")
    if orientation.shape != edges.shape:
        raise ValueError(
            f"{op}: orientation must have the shape of edges {_shape(edges)}, got "
            f"{_shape(orientation)}"
        )
    if orientation.dtype != edges.dtype:
        raise ValueError(
            f"{op}: orientation must have the dtype of edges ({dtype_name(edges.dtype)}), got "
            f"{dtype_name(orientation.dtype)}"
        )
    h, w = edges.shape
    if h < 2 or w < 2:
        raise ValueError(f"{op}: edges must be at least 2 x 2, got {h} x {w}")
    if not 0 <= radius <= _INT32_MAX:
        raise ValueError(f"{op}: radius must be >= 0, got {radius}")
    if border < 0:
        raise ValueError(f"{op}: border must be >= 0, got {border}")
    if not math.isfinite(multiplier):
        raise ValueError(f"{op}: multiplier must be finite, got {multiplier}")
    _check_finite(op, "edges", edges)
    _check_finite(op, "orientation", orientation)
    e = edges.numpy()
    dtype = e.dtype.type
    o = orientation.numpy()
    cos, sin = _libm(math.cos, o).astype(e.dtype), _libm(math.sin, o).astype(e.dtype)
    ys, xs = np.mgrid[:h, :w]
    xs, ys = xs.astype(e.dtype), ys.astype(e.dtype)
    value = e * dtype(multiplier)
    suppressed = np.zeros((h, w), dtype=bool)
    for d in range(-radius, radius + 1):
        if d:
            dd = dtype(d)
            suppressed |= value < _interpolate(e, xs + dd * cos, ys + dd * sin)
    out = np.where((e != 0) & suppressed, dtype(0), e)
    s = min(border, w // 2, h // 2)
    for x in range(s):
        f = dtype(x) / dtype(s)
        out[:, x] *= f
        out[:, w - 1 - x] *= f
    for y in range(s):
        f = dtype(y) / dtype(s)
        out[y, :] *= f
        out[h - 1 - y, :] *= f
    return torch.from_numpy(out)


# ---- boundary correspondence -------------------------------------------------------------


def _check_max_dist(op: str, max_dist: float) -> None:
    if not (math.isfinite(max_dist) and 0 <= max_dist <= 1):
        raise ValueError(
            f"{op}: max_dist (a fraction of the image diagonal) must be in [0, 1], got {max_dist}"
        )


def _offsets(radius: float, h: int, w: int) -> np.ndarray:
    """(dy, dx, d2) rows with d2 <= radius^2, |dy| < h, |dx| < w, sorted by (d2, dy, dx)."""
    r = math.ceil(radius)
    ry, rx = min(r, h - 1), min(r, w - 1)
    dy, dx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    dy, dx = dy.ravel(), dx.ravel()
    d2 = dy * dy + dx * dx
    keep = d2.astype(np.float64) <= radius * radius
    dy, dx, d2 = dy[keep], dx[keep], d2[keep]
    order = np.lexsort((dx, dy, d2))
    return np.stack([dy[order], dx[order], d2[order]], 1)


class _Grid:
    """Ground-truth node ids on a grid framed by ``pad`` pixels of -1 (row-major ids)."""

    def __init__(self, gt: np.ndarray, offsets: np.ndarray) -> None:
        h, w = gt.shape
        self.w = w
        self.pad = int(np.abs(offsets[:, :2]).max(initial=0))
        p = self.pad
        self.id = np.full((h + 2 * p, w + 2 * p), -1, dtype=np.int64)
        ys, xs = np.nonzero(gt)
        self.pixel = ys * w + xs
        self.id[ys + p, xs + p] = np.arange(len(ys))
        self.stride = w + 2 * p
        self.steps = offsets[:, 0] * self.stride + offsets[:, 1]
        self.rank = np.concatenate([[0], np.cumsum(np.diff(offsets[:, 2]) != 0)])

    def cells(self, pixels: np.ndarray) -> np.ndarray:
        ys, xs = np.divmod(pixels, self.w)
        return (ys + self.pad) * self.stride + xs + self.pad


def _match(pred: np.ndarray, grid: _Grid) -> np.ndarray:
    """The matching of matching.h: the ground-truth node of each pixel of ``pred`` or -1."""
    candidates = grid.id.ravel()[grid.cells(pred)[:, None] + grid.steps[None, :]]
    valid = candidates >= 0
    rows = np.flatnonzero(valid.any(1))
    node_valid = valid[rows]
    start = np.concatenate([[0], np.cumsum(node_valid.sum(1))]).tolist()
    adj = candidates[rows][node_valid].tolist()
    adj_rank = np.broadcast_to(grid.rank, valid.shape)[rows][node_valid]
    n = len(rows)
    mate = [-1] * n
    gt_node = [-1] * len(grid.pixel)
    # 1. greedy by increasing distance rank, then node, then offset order
    edge_node = np.repeat(np.arange(n), np.diff(start)).tolist()
    for e in np.argsort(adj_rank, kind="stable").tolist():
        v, g = edge_node[e], adj[e]
        if mate[v] < 0 and gt_node[g] < 0:
            mate[v], gt_node[g] = g, v
    # 2. Hopcroft-Karp phases
    while True:
        dist = [0 if mate[v] < 0 else _INF for v in range(n)]
        queue = [v for v in range(n) if mate[v] < 0]
        found = _INF
        head = 0
        while head < len(queue):
            v = queue[head]
            head += 1
            if dist[v] >= found:
                continue
            for e in range(start[v], start[v + 1]):
                u = gt_node[adj[e]]
                if u < 0:
                    if found == _INF:
                        found = dist[v] + 1
                elif dist[u] == _INF:
                    dist[u] = dist[v] + 1
                    queue.append(u)
        if found == _INF:
            break
        cursor = start[:-1]
        for root in range(n):
            if mate[root] < 0:
                _augment(root, start, adj, cursor, dist, found, mate, gt_node)
    out = np.full(len(pred), -1, dtype=np.int64)
    out[rows] = mate
    return out


def _augment(root, start, adj, cursor, dist, found, mate, gt_node) -> bool:
    """Iterative depth-first search for an augmenting path along the layers from ``root``."""
    stack, via = [root], []
    while stack:
        v = stack[-1]
        descended = False
        while cursor[v] < start[v + 1]:
            g = adj[cursor[v]]
            cursor[v] += 1
            u = gt_node[g]
            if u < 0:
                if dist[v] + 1 == found:
                    via.append(g)
                    for p, q in zip(stack, via):
                        mate[p], gt_node[q] = q, p
                    return True
            elif dist[u] == dist[v] + 1:
                via.append(g)
                stack.append(u)
                descended = True
                break
        if not descended:
            dist[v] = _INF
            stack.pop()
            if via:
                via.pop()
    return False


def _pixels(binary: np.ndarray) -> np.ndarray:
    return np.flatnonzero(binary.ravel()).astype(np.int64)


def correspond_pixels(
    pred: torch.Tensor, gt: torch.Tensor, max_dist: float
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "correspond_pixels"
    _check_binary(op, "pred", pred)
    _check_binary(op, "gt", gt)
    if pred.dim() != 2:
        raise ValueError(f"{op}: pred must be H x W, got {pred.dim()}-D")
    if gt.shape != pred.shape:
        raise ValueError(f"{op}: gt must have the shape of pred {_shape(pred)}, got {_shape(gt)}")
    _check_max_dist(op, max_dist)
    h, w = pred.shape
    _check_pixels(op, "pred", h, w)
    match_pred = np.full(h * w, -1, dtype=np.int64)
    match_gt = np.full(h * w, -1, dtype=np.int64)
    if h and w:
        grid = _Grid(gt.numpy() != 0, _offsets(max_dist * math.hypot(h, w), h, w))
        pixels = _pixels(pred.numpy() != 0)
        mate = _match(pixels, grid)
        matched = mate >= 0
        match_pred[pixels[matched]] = grid.pixel[mate[matched]]
        match_gt[grid.pixel[mate[matched]]] = pixels[matched]
    return torch.from_numpy(match_pred.reshape(h, w)), torch.from_numpy(match_gt.reshape(h, w))


# ---- one image of the benchmark ----------------------------------------------------------


def boundary_pr_counts(
    edges: torch.Tensor,
    ground_truth: torch.Tensor,
    thresholds: torch.Tensor,
    max_dist: float,
    thin: bool,
) -> torch.Tensor:
    op = "boundary_pr_counts"
    _check_floating(op, "edges", edges)
    _check_binary(op, "ground_truth", ground_truth)
    _check_dtype(op, "thresholds", thresholds, (torch.float64,), "a float64 tensor")
    if edges.dim() != 2:
        raise ValueError(f"{op}: edges must be H x W, got {edges.dim()}-D")
    h, w = edges.shape
    if ground_truth.dim() != 3 or tuple(ground_truth.shape[1:]) != (h, w):
        raise ValueError(
            f"{op}: ground_truth must be A x {h} x {w} (annotators x the shape of edges), got "
            f"{_shape(ground_truth)}"
        )
    if thresholds.dim() != 1:
        raise ValueError(f"{op}: thresholds must be 1-D, got {thresholds.dim()}-D")
    _check_max_dist(op, max_dist)
    _check_finite(op, "edges", edges)
    _check_finite(op, "thresholds", thresholds)
    _check_pixels(op, "edges", h + 2, w + 2)
    counts = np.zeros((len(thresholds), 4), dtype=np.int64)
    if not (len(thresholds) and h and w):
        return torch.from_numpy(counts)
    e = edges.numpy().astype(np.float64)
    offsets = _offsets(max_dist * math.hypot(h, w), h, w)
    grids = [_Grid(g != 0, offsets) for g in ground_truth.numpy()]
    for k, threshold in enumerate(thresholds.tolist()):
        binary = (e >= max(_EPS, threshold)).astype(np.uint8)
        if thin:
            binary = _thin_numpy(binary)
        pixels = _pixels(binary)
        hit = np.zeros(len(pixels), dtype=bool)
        for grid in grids:
            mate = _match(pixels, grid)
            counts[k, 0] += int((mate >= 0).sum())
            counts[k, 1] += len(grid.pixel)
            hit |= mate >= 0
        counts[k, 2:] = int(hit.sum()), len(pixels)
    return torch.from_numpy(counts)
