"""PackedRLEs: the vectorised select / cat / replace agree with the same operations done on
lists of pycocotools RLEs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sam_lightning.inference.packed_rles import PackedRLEs


def random_masks(count: int, seed: int, height: int = 13, width: int = 9) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    density = rng.uniform(0, 1, size=(count, 1, 1))
    return torch.from_numpy(rng.uniform(size=(count, height, width)) < density)


def coco_strings(masks: torch.Tensor) -> list[str]:
    fortran = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    return [rle["counts"].decode() for rle in mask_utils.encode(fortran)]


@pytest.mark.parametrize("seed", range(4))
def test_encode_and_views_match_pycocotools(seed):
    masks = random_masks(7, seed)
    packed = PackedRLEs.encode(masks)
    expected = coco_strings(masks)
    assert len(packed) == 7
    assert packed.counts_strings() == expected
    assert torch.equal(packed.decode().bool(), masks)
    assert packed.areas().tolist() == masks.sum((1, 2)).tolist()
    fortran = masks.permute(0, 2, 1).reshape(7, -1).numpy()
    for counts, flat in zip(packed.uncompressed_counts(), fortran):
        assert sum(counts) == flat.size
        rebuilt = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
        np.testing.assert_array_equal(rebuilt, flat)


@pytest.mark.parametrize("seed", range(4))
def test_select_cat_replace_match_list_operations(seed):
    rng = np.random.default_rng(seed)
    first, second = random_masks(6, seed), random_masks(4, seed + 100)
    strings = coco_strings(first) + coco_strings(second)
    packed = PackedRLEs.cat(
        [PackedRLEs.encode(first), PackedRLEs.empty(13, 9), PackedRLEs.encode(second)], 13, 9
    )
    assert packed.counts_strings() == strings

    order = torch.from_numpy(rng.integers(0, 10, size=12))
    assert packed.select(order).counts_strings() == [strings[i] for i in order.tolist()]
    keep = torch.from_numpy(rng.uniform(size=10) < 0.5)
    expected = [s for s, k in zip(strings, keep.tolist()) if k]
    assert packed.select(keep).counts_strings() == expected
    assert len(packed.select(torch.zeros(0, dtype=torch.int64))) == 0

    positions = torch.tensor([8, 1, 4])
    new = random_masks(3, seed + 200)
    replaced = packed.replace(positions, PackedRLEs.encode(new)).counts_strings()
    expected = list(strings)
    for position, text in zip(positions.tolist(), coco_strings(new)):
        expected[position] = text
    assert replaced == expected


def test_size_mismatches_are_refused():
    with pytest.raises(ValueError, match="cannot concatenate RLEs of size 13x9 with 9x13"):
        PackedRLEs.cat([PackedRLEs.encode(random_masks(2, 0))], 9, 13)
    packed = PackedRLEs.encode(random_masks(3, 0))
    with pytest.raises(ValueError, match="2 positions but 1 replacement"):
        packed.replace(torch.tensor([0, 1]), PackedRLEs.encode(random_masks(1, 1)))
    with pytest.raises(ValueError, match="N x H x W"):
        PackedRLEs.encode(torch.zeros(4, 4, dtype=torch.bool))
