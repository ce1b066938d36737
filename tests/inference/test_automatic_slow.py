"""Our SamAutomaticMaskGenerator against the official one at full size: ``vit_b`` with the
official (seeded random) initialisation, its weights loaded strictly into our model, on a
real 400x600 photo (skimage's ``coffee``).

Random weights make every mask image-wide (bounding box = the whole image), so box NMS
below 1.0 keeps one mask and the crop-edge filter drops every mask of a crop (with crops
and NMS 0.8 exactly one mask comes out). The cases with the real decoder therefore keep
every mask; the crop case drives the full-size models (same encoders) with the localising
stand-in decoder (:mod:`localising_decoder`), whose masks are shaped by the full-size
image embedding of each crop.

The encoder dominates the cost (about 10 s per 1024x1024 input on 2 CPU cores), so every
generator runs once per case in a module-scoped fixture whose output the tests share, and
the encoders memoise their output on identical inputs: each implementation encodes the
image once and the four crops once (5 encoder runs, 10 in all).
"""

from __future__ import annotations

import copy
import hashlib

import localising_decoder
import numpy as np
import pytest
import skimage.data
import torch
from pycocotools import mask as mask_utils
from test_automatic import ATOL, as_coco, assert_same_masks

from sam_lightning import SamAutomaticMaskGenerator, build_sam

pytestmark = [
    pytest.mark.slow,
    # pycocotools' decode under numpy 2
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

POINTS_PER_SIDE = 8
MIN_AREA = 200

#: Real decoder, thresholds 0 and NMS 1.0: every one of the ``3 * 8**2`` masks comes out.
EVERY_MASK = dict(
    points_per_side=POINTS_PER_SIDE,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
    output_mode="binary_mask",
)

#: The same, plus hole and island removal under ``MIN_AREA`` pixels and its NMS (at 1.0).
SMALL_REGIONS = dict(EVERY_MASK, min_mask_region_area=MIN_AREA, output_mode="uncompressed_rle")

#: With the localising decoder: one crop layer (the image and 4 overlapping crops with a
#: 4x4 grid each), box NMS within and across crops and small-region removal.
CROPS = dict(
    points_per_side=POINTS_PER_SIDE,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=0.8,
    crop_n_layers=1,
    crop_n_points_downscale_factor=2,
    crop_nms_thresh=0.8,
    min_mask_region_area=MIN_AREA,
    output_mode="coco_rle",
)


def memoise_encoder(model: torch.nn.Module) -> None:
    """Makes ``model.image_encoder`` return its earlier output for an identical input."""
    encoder = model.image_encoder
    forward = encoder.forward
    cache: dict[tuple, torch.Tensor] = {}

    def cached_forward(x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest())
        if key not in cache:
            cache[key] = forward(x)
        return cache[key]

    encoder.forward = cached_forward


@pytest.fixture(scope="module")
def vit_b_pair(official):
    """(official vit_b, our vit_b) with the same random weights, memoising encoders."""
    torch.manual_seed(0)
    reference = official.sam_model_registry["vit_b"]().eval()
    ours = build_sam("vit_b")
    ours.load_state_dict(reference.state_dict(), strict=True)
    memoise_encoder(reference)
    memoise_encoder(ours)
    return reference, ours


class ChannelWeighting(torch.nn.Module):
    """Gives ``decoder`` the image embedding with its channels scaled by fixed random weights.

    The localising decoder's texture is the channel mean of the embedding, and the official
    initialisation ends the encoder with a LayerNorm2d of weight 1 and bias 0: that mean is
    then rounding noise (|mean| < 1e-7), which the decoder normalises to a texture of
    amplitude 4, so the masks would be shaped by float noise. A weighted mean is not."""

    def __init__(self, decoder: torch.nn.Module, weights: torch.Tensor):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("weights", weights)

    def forward(self, image_embeddings: torch.Tensor, *args, **kwargs):
        weighted = image_embeddings * self.weights[:, None, None]
        return self.decoder(weighted, *args, **kwargs)


@pytest.fixture(scope="module")
def localising_vit_b_pair(vit_b_pair):
    """Copies of the pair with the localising decoder; they share the (memoised) encoders."""
    weights = torch.randn(256, generator=torch.Generator().manual_seed(0))
    pair = []
    for model in vit_b_pair:
        encoder = model.image_encoder
        clone = copy.deepcopy(model, memo={id(encoder): encoder})
        localising_decoder.install(clone)
        clone.mask_decoder = ChannelWeighting(clone.mask_decoder, weights)
        pair.append(clone)
    return tuple(pair)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.coffee()  # 400x600 RGB uint8


def generate_both(pair, official, image, params) -> tuple[list[dict], list[dict]]:
    reference_model, our_model = pair
    reference = official.SamAutomaticMaskGenerator(reference_model, **params).generate(image)
    ours = SamAutomaticMaskGenerator(our_model, **params).generate(image)
    return reference, ours


@pytest.fixture(scope="module")
def every_mask(vit_b_pair, official, photo):
    return generate_both(vit_b_pair, official, photo, EVERY_MASK)


@pytest.fixture(scope="module")
def small_regions(vit_b_pair, official, photo):
    return generate_both(vit_b_pair, official, photo, SMALL_REGIONS)


@pytest.fixture(scope="module")
def crops(localising_vit_b_pair, official, photo):
    return generate_both(localising_vit_b_pair, official, photo, CROPS)


def assert_same_order(reference: list[dict], ours: list[dict]) -> None:
    """The i-th mask of ours is the official i-th mask (prompt, crop, scores, IoU >= 0.99)."""
    assert len(ours) == len(reference)
    for i, (ref, our) in enumerate(zip(reference, ours)):
        np.testing.assert_allclose(our["point_coords"], ref["point_coords"], err_msg=f"mask {i}")
        assert our["crop_box"] == ref["crop_box"], f"mask {i}"
        assert abs(our["predicted_iou"] - ref["predicted_iou"]) <= ATOL, f"mask {i}"
        assert np.allclose(
            our["stability_score"], ref["stability_score"], atol=ATOL, equal_nan=True
        ), f"mask {i}"
        if ref["area"] or our["area"]:
            rles = [as_coco(ref["segmentation"])], [as_coco(our["segmentation"])]
            iou = mask_utils.iou(*rles, [0])[0, 0]
            assert iou >= 0.99, f"mask {i}: IoU {iou}"


def assert_no_small_regions(official, records: list[dict]) -> None:
    """No mask has a hole, or an island other than its largest, under ``MIN_AREA`` pixels:
    the official removal changes none of them."""
    remove = official.utils.amg.remove_small_regions
    for i, record in enumerate(records):
        mask = mask_utils.decode(as_coco(record["segmentation"])).astype(bool)
        cleaned, _ = remove(mask, MIN_AREA, "holes")
        cleaned, _ = remove(cleaned, MIN_AREA, "islands")
        assert np.array_equal(cleaned, mask), f"mask {i}"


def test_every_mask_matches_official(every_mask, photo):
    """Thresholds 0, NMS 1.0, no crops: every mask passes every post-processing step."""
    reference, ours = every_mask
    assert len(reference) == 3 * POINTS_PER_SIDE**2
    assert_same_masks(reference, ours)
    assert_same_order(reference, ours)
    for ref, our in zip(reference, ours):
        assert our["segmentation"].dtype == bool
        assert our["segmentation"].shape == photo.shape[:2]
        assert {k: type(v) for k, v in our.items()} == {k: type(v) for k, v in ref.items()}


def test_small_regions_match_official(official, every_mask, small_regions):
    """Hole and island removal on the real decoder's masks. They are full of small holes
    and islands, so it changes every one of them (even a 10-pixel limit would), and
    its NMS at 1.0 keeps all 192 masks in their order."""
    reference, ours = small_regions
    assert len(reference) == 3 * POINTS_PER_SIDE**2
    assert_same_masks(reference, ours)
    assert_same_order(reference, ours)
    assert_no_small_regions(official, ours)
    raw_areas = sorted(r["area"] for r in every_mask[1])
    assert sorted(r["area"] for r in ours) != raw_areas, "the removal must change masks"


def test_crops_match_official(official, crops):
    """Crop layer 1 (4 crops, 4x4 grids, masks touching an inner crop edge dropped), box
    NMS 0.8 within each crop, NMS 0.8 across crops preferring the smaller crops, then holes
    and islands under 200 pixels removed and the NMS (0.8) after it.

    With seed 0: 26 masks before the removal (19 from the whole image, 7 from 3 of the 4
    crops); the removal changes all of them (the stand-in's ripple makes holes and
    islands), so its NMS has no unchanged mask to prefer; it keeps 22, in their order."""
    reference, ours = crops
    assert len(reference) >= 15, "the parameters must let many masks through"
    assert_same_masks(reference, ours)
    assert_same_order(reference, ours)
    assert len({tuple(r["crop_box"]) for r in ours}) > 1, "the crops contribute masks"
    assert_no_small_regions(official, ours)
