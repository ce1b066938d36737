"""Registration of the compiled RLE operators: schemas, fake kernels, fallback loading."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sam_lightning import ops
from sam_lightning.ops import _extension

RLE_OPS = [
    "rle_area",
    "rle_compress",
    "rle_decode",
    "rle_decompress",
    "rle_encode",
    "rle_iou",
    "rle_merge",
    "rle_select",
    "rle_to_bbox",
]

needs_extension = pytest.mark.skipif(
    not ops.HAS_EXTENSION, reason=f"compiled extension not loaded: {ops.LOAD_ERROR}"
)


@needs_extension
def test_operators_registered_with_cpu_kernels():
    assert set(RLE_OPS) <= set(_extension.registered_operators())
    for name in RLE_OPS:
        assert _extension.kernel_backends(name)[0] == "CPU"


def opcheck_cases() -> list[tuple[str, tuple]]:
    masks = torch.from_numpy(np.random.default_rng(0).random((3, 5, 4)) < 0.4)
    chars, offsets = torch.ops.sam_lightning.rle_encode(masks)
    sizes = torch.tensor([[5, 4]] * 3)
    counts, count_offsets = torch.ops.sam_lightning.rle_decompress(chars, offsets)
    crowd = torch.tensor([0, 1, 0], dtype=torch.uint8)
    return [
        ("rle_encode", (masks,)),
        ("rle_encode", (masks.transpose(1, 2).contiguous().transpose(1, 2).to(torch.uint8),)),
        ("rle_decode", (chars, offsets, 5, 4)),
        ("rle_area", (chars, offsets, sizes)),
        ("rle_to_bbox", (chars, offsets, sizes)),
        ("rle_iou", (chars, offsets, sizes, chars, offsets, sizes, crowd)),
        ("rle_merge", (chars, offsets, sizes, False)),
        ("rle_merge", (chars, offsets, sizes, True)),
        ("rle_compress", (counts, count_offsets)),
        ("rle_decompress", (chars, offsets)),
        ("rle_select", (chars, offsets, torch.tensor([2, 0, 2]))),
    ]


@needs_extension
@pytest.mark.parametrize("index", range(11))
def test_opcheck(index):
    name, args = opcheck_cases()[index]
    torch.library.opcheck(getattr(torch.ops.sam_lightning, name).default, args)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_disabled_extension_warns_once_and_falls_back():
    code = (
        "import warnings, numpy as np\n"
        "import sam_lightning.ops as ops\n"
        "import sam_lightning.ops.rle\n"
        "import importlib; importlib.reload(ops)\n"
        "assert not ops.HAS_EXTENSION and ops.rle._KERNELS is ops._rle_reference\n"
        "print(ops.rle_encode(np.eye(3, dtype=np.uint8))[0]['counts'])\n"
    )
    result = run_python(code, SAM_LIGHTNING_DISABLE_EXTENSION="1")
    assert result.stdout.strip() == "b'013000'"  # pycocotools' encoding of eye(3)
    warnings = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1, result.stderr
    assert "compiled operators unavailable" in warnings[0]
    assert "disabled by SAM_LIGHTNING_DISABLE_EXTENSION=1" in warnings[0]
