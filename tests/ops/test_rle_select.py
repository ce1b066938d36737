"""rle_select (gathering counts strings by position) on both kernel backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backends import BACKENDS, kernels_of

from sam_lightning.ops import HAS_EXTENSION


def strings(chars: torch.Tensor, offsets: torch.Tensor) -> list[bytes]:
    data, bounds = chars.numpy().tobytes(), offsets.tolist()
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.fixture(params=BACKENDS)
def kernels(request):
    if request.param == "compiled" and not HAS_EXTENSION:
        pytest.skip("compiled extension not loaded")
    return kernels_of(request.param)


@pytest.mark.parametrize("seed", range(5))
def test_select_gathers_strings_in_index_order(kernels, seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 40))
    masks = torch.from_numpy(rng.uniform(size=(count, 7, 11)) < rng.uniform(size=(count, 1, 1)))
    chars, offsets = kernels.rle_encode(masks)
    index = torch.from_numpy(rng.integers(0, count, size=int(rng.integers(0, 60))))
    new_chars, new_offsets = kernels.rle_select(chars, offsets, index)
    expected = [strings(chars, offsets)[i] for i in index.tolist()]
    assert strings(new_chars, new_offsets) == expected
    assert new_offsets.shape == (len(index) + 1,) and new_offsets[0] == 0


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (torch.tensor([0, 3]), r"index\[1\] = 3 is outside \[0, 3\)"),
        (torch.tensor([-1]), r"index\[0\] = -1 is outside"),
        (torch.tensor([[0]]), "index must be a 1-D int64 tensor"),
        (torch.tensor([0.0]), "index must be a 1-D int64 tensor"),
    ],
)
def test_select_refuses_bad_indices(kernels, index, message):
    chars, offsets = kernels.rle_encode(torch.ones(3, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=message):
        kernels.rle_select(chars, offsets, index)
