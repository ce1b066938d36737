"""Malformed RLE input raises ValueError naming the RLE and the problem, never crashes, and
both backends report exactly the same message."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from sam_lightning import ops
from sam_lightning.ops import _rle_reference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def counts_string(values: list[int]) -> bytes:
    """Counts string of arbitrary (even out-of-range) counts, delta rule included."""
    return _rle_reference._compress(np.array(values, dtype=np.int64))


def rle(counts, size=(2, 2)) -> dict:
    return {"size": list(size), "counts": counts}


GOOD = rle(b"13")  # [1, 3] on 2 x 2
MALFORMED = [
    ("bad_char", [rle(b"0~")], r"RLE 0: invalid character '~' \(0x7e\) at position 1"),
    ("nul_char", [rle(b"1\x00")], r"RLE 0: invalid character 0x00 at position 1"),
    ("index_named", [GOOD, GOOD, rle(b"1{")], r"^RLE 2: invalid character"),
    ("truncated", [rle(b"2P")], r"truncated counts string: the last character \(position 1\)"),
    ("too_many_groups", [rle(b"PPPPPPP0")], r"count value starting at position 0 overflows"),
    ("negative_after_delta", [rle(b"111K")], r"negative count -4 at index 3 after delta decoding"),
    (
        "above_32_bits",
        [rle(counts_string([2**33]))],
        r"count 8589934592 at index 0 overflows 32 bits",
    ),
    (
        "sum_too_large",
        [rle(counts_string([1000]), (20, 40))],
        r"counts sum to 1000 but size 20x40 has 800 pixels",
    ),
    (
        "sum_too_small",
        [rle(counts_string([3, 4]), (3, 3))],
        r"counts sum to 7 but size 3x3 has 9 pixels",
    ),
    ("empty_counts", [rle(b"")], r"counts sum to 0 but size 2x2 has 4 pixels"),
    (
        "zero_size",
        [rle(b"", (0, 5))],
        r"RLE 0: invalid size \[0, 5\]: height and width must be positive",
    ),
    ("negative_size", [GOOD, rle(b"4", (-1, 5))], r"RLE 1: invalid size \[-1, 5\]"),
    (
        "huge_size",
        [rle(b"4", (70000, 70000))],
        r"size \[70000, 70000\] has more pixels than 32-bit",
    ),
    ("missing_size", [{"counts": b"4"}], r"RLE 0: missing 'size'"),
    ("missing_counts", [GOOD, {"size": [2, 2]}], r"RLE 1: missing 'counts'"),
    ("size_not_pair", [rle(b"4", (2, 2, 1))], r"RLE 0: 'size' must be \[height, width\]"),
    ("size_floats", [rle(b"4", (2.0, 2.0))], r"RLE 0: 'size' must be \[height, width\]"),
    ("size_string", [{"size": "22", "counts": b"4"}], r"'size' must be \[height, width\]"),
    ("counts_float", [rle(3.5)], r"RLE 0: 'counts' must be bytes, str or a list of ints"),
    ("counts_list_floats", [rle([1.5, 2.5])], r"RLE 0: 'counts' must be a 1-D sequence of ints"),
    ("counts_list_negative", [rle([1, -1, 4])], r"RLE 0: 'counts'\[1\] = -1 is negative"),
    ("counts_list_huge", [rle([2**33])], r"RLE 0: 'counts'\[0\] = 8589934592 overflows 32 bits"),
    ("counts_list_sum", [rle([1, 2])], r"RLE 0: counts sum to 3 but size 2x2 has 4 pixels"),
    ("counts_non_ascii", [rle("1é")], r"RLE 0: 'counts' has a non-ASCII character at position 1"),
    ("not_a_dict", [GOOD, "13"], r"RLE 1: expected a dict with 'size' and 'counts'"),
]


@pytest.mark.parametrize("rles, message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
@pytest.mark.parametrize("function", ["rle_area", "rle_to_bbox", "rle_decode", "rle_merge"])
def test_malformed_rles_raise(backend, function, rles, message):
    with pytest.raises(ValueError, match=message):
        getattr(ops, function)(rles)


def test_malformed_rles_in_iou_name_the_side(backend):
    with pytest.raises(ValueError, match=r"^gt RLE 1: invalid character"):
        ops.rle_iou([GOOD], [GOOD, rle(b"1{")], [0, 0])
    with pytest.raises(ValueError, match=r"^dt RLE 0: missing 'counts'"):
        ops.rle_iou([{"size": [2, 2]}], [GOOD], [0])
    with pytest.raises(
        ValueError,
        match=r"iscrowd must be a 1-D bool or uint8 tensor with one flag per gt RLE \(2\)",
    ):
        ops.rle_iou([GOOD], [GOOD, GOOD], [0])


@pytest.mark.parametrize(
    "masks, message",
    [
        (torch.zeros((2, 3, 4)), r"rle_encode: masks must be bool or uint8, got Float"),
        (np.zeros((2, 3, 4), np.int32), r"rle_encode: masks must be bool or uint8, got Int"),
        (
            torch.zeros((1, 2, 3, 4), dtype=torch.bool),
            r"masks must be H x W or N x H x W, got shape \[1, 2, 3, 4\]",
        ),
        (torch.zeros((2, 0, 3), dtype=torch.bool), r"rle_encode: masks of invalid size \[0, 3\]"),
        ([[0, 1]], r"masks must be a torch.Tensor or numpy.ndarray"),
    ],
)
def test_bad_masks_raise(backend, masks, message):
    with pytest.raises(ValueError, match=message):
        ops.rle_encode(masks)


def test_compress_decompress_errors(backend):
    with pytest.raises(ValueError, match=r"counts\[1\] = -3 is negative"):
        ops.rle_compress([1, -3])
    with pytest.raises(ValueError, match=r"RLE 0: invalid character '~' \(0x7e\) at position 2"):
        ops.rle_decompress("12~")
    with pytest.raises(ValueError, match=r"RLE 0: truncated counts string"):
        ops.rle_decompress(b"1P")
    with pytest.raises(ValueError, match=r"counts must be bytes or str"):
        ops.rle_decompress([1, 2])


def kernel_backends() -> list:
    return [torch.ops.sam_lightning, _rle_reference] if ops.HAS_EXTENSION else [_rle_reference]


def outcome(kernels, name: str, *args):
    """Result (as lists) or the ValueError message of one kernel call; other errors fail."""
    try:
        result = getattr(kernels, name)(*args)
    except ValueError as error:
        return "ValueError: " + str(error).split("\n")[0]
    results = result if isinstance(result, tuple) else (result,)
    return [r.tolist() for r in results]


U8, I64 = torch.uint8, torch.int64
TENSOR_ERRORS = [
    (
        "rle_area",
        (torch.zeros(3, dtype=torch.int32), torch.tensor([0, 3]), torch.tensor([[1, 3]])),
        r"rle_area: chars must be a 1-D uint8 tensor, got 1-D Int",
    ),
    (
        "rle_area",
        (torch.zeros((1, 3), dtype=U8), torch.tensor([0, 3]), torch.tensor([[1, 3]])),
        r"chars must be a 1-D uint8 tensor, got 2-D Byte",
    ),
    (
        "rle_area",
        (torch.zeros(3, dtype=U8), torch.tensor([0.0, 3.0]), torch.tensor([[1, 3]])),
        r"offsets must be a 1-D int64 tensor of length N \+ 1, got 1-D Float",
    ),
    (
        "rle_area",
        (torch.zeros(3, dtype=U8), torch.zeros(0, dtype=I64), torch.zeros((0, 2), dtype=I64)),
        r"with 0 elements",
    ),
    (
        "rle_area",
        (torch.zeros(3, dtype=U8), torch.tensor([0, 4]), torch.tensor([[1, 3]])),
        r"offsets\[1\] = 4 is outside \[0, 3\]",
    ),
    (
        "rle_area",
        (torch.zeros(3, dtype=U8), torch.tensor([-1, 3]), torch.tensor([[1, 3]])),
        r"offsets\[0\] = -1 is outside",
    ),
    (
        "rle_area",
        (torch.zeros(3, dtype=U8), torch.tensor([0, 2, 1]), torch.tensor([[1, 3]] * 2)),
        r"offsets must be non-decreasing, got offsets\[1\] = 2 > offsets\[2\] = 1",
    ),
    (
        "rle_area",
        (torch.zeros(3, dtype=U8), torch.tensor([0, 3]), torch.tensor([1, 3])),
        r"sizes must be an int64 tensor of shape \(1, 2\), got shape \[2\]",
    ),
    (
        "rle_to_bbox",
        (torch.zeros(3, dtype=U8), torch.tensor([0, 3]), torch.tensor([[1, 3]], dtype=torch.int32)),
        r"and dtype Int",
    ),
    (
        "rle_decode",
        (torch.tensor([52], dtype=U8), torch.tensor([0, 1]), 0, 4),
        r"rle_decode: invalid size \[0, 4\]",
    ),
    (
        "rle_merge",
        (torch.zeros(0, dtype=U8), torch.tensor([0]), torch.zeros((0, 2), dtype=I64), False),
        r"rle_merge: needs at least one RLE",
    ),
    (
        "rle_compress",
        (torch.tensor([1.0]), torch.tensor([0, 1])),
        r"rle_compress: counts must be a 1-D int64 tensor, got 1-D Float",
    ),
    (
        "rle_compress",
        (torch.tensor([1, 2**33]), torch.tensor([0, 1, 2])),
        r"RLE 1: count 8589934592 at index 0 overflows 32 bits",
    ),
    (
        "rle_compress",
        (torch.tensor([1, 2]), torch.tensor([0, 3])),
        r"offsets\[1\] = 3 is outside \[0, 2\]",
    ),
]


@pytest.mark.parametrize(
    "name, args, message", TENSOR_ERRORS, ids=[f"{c[0]}-{i}" for i, c in enumerate(TENSOR_ERRORS)]
)
def test_kernel_argument_errors(name, args, message):
    outcomes = {str(k): outcome(k, name, *args) for k in kernel_backends()}
    for result in outcomes.values():
        assert isinstance(result, str) and re.search(message, result), result
    assert len(set(outcomes.values())) == 1, outcomes


def test_iou_size_checks_agree():
    chars, offsets = torch.tensor([52], dtype=U8), torch.tensor([0, 1])
    args = (
        chars,
        offsets,
        torch.tensor([[2, 2]]),
        chars,
        offsets,
        torch.tensor([[1, 4]]),
        torch.zeros(1, dtype=U8),
    )
    outcomes = {outcome(k, "rle_iou", *args) for k in kernel_backends()}
    assert outcomes == {
        "ValueError: rle_iou: dt RLE 0 has size [2, 2] but gt RLE 0 has size [1, 4]"
    }


def test_random_bytes_fuzz():
    """Random strings and offsets: every op returns the same result or raises the same
    ValueError on both backends, and never crashes."""
    rng = np.random.default_rng(2024)
    alphabet = np.concatenate([np.arange(48, 112), [0, 10, 32, 47, 112, 126, 200, 255]])
    raised = 0
    for _ in range(400):
        n = int(rng.integers(0, 4))
        length = int(rng.integers(0, 24))
        chars = torch.from_numpy(rng.choice(alphabet, length).astype(np.uint8))
        if rng.random() < 0.8:
            offsets = np.sort(rng.integers(0, length + 1, n + 1))
            offsets[0], offsets[-1] = 0, length
        else:
            offsets = rng.integers(-2, length + 3, n + 1)
        offsets = torch.from_numpy(offsets.astype(np.int64))
        h, w = (int(v) for v in rng.integers(-1, 7, 2))
        sizes = torch.tensor([[h, w]] * n, dtype=torch.int64).reshape(n, 2)
        calls = [
            ("rle_decompress", chars, offsets),
            ("rle_decode", chars, offsets, h, w),
            ("rle_area", chars, offsets, sizes),
            ("rle_to_bbox", chars, offsets, sizes),
            ("rle_merge", chars, offsets, sizes, bool(rng.integers(2))),
            ("rle_iou", chars, offsets, sizes, chars, offsets, sizes, torch.ones(n, dtype=U8)),
        ]
        for name, *args in calls:
            outcomes = [outcome(k, name, *args) for k in kernel_backends()]
            assert all(o == outcomes[0] for o in outcomes), (name, args, outcomes)
            raised += isinstance(outcomes[0], str)
    assert 0 < raised < 400 * 6  # both outcomes occur
