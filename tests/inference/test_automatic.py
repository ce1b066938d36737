"""Our SamAutomaticMaskGenerator against the official one: same weights, same image, same
parameters -> the same masks, scores and records."""

from __future__ import annotations

import json

import localising_decoder
import numpy as np
import pytest
import torch
from conftest import SMALL, build_official_small
from pycocotools import mask as mask_utils

from sam_lightning import SamAutomaticMaskGenerator
from sam_lightning.inference import crops
from sam_lightning.modeling.build import build_sam_custom

ATOL = 1e-4


def build_pair(tmp_path, localising: bool):
    """(official model, our model) with the same random weights; with ``localising`` both
    get the same stand-in decoder that makes localised masks."""
    official_model = build_official_small(seed=1)
    path = tmp_path / "small.pth"
    torch.save(official_model.state_dict(), path)
    ours = build_sam_custom(
        SMALL["embed_dim"],
        SMALL["depth"],
        SMALL["num_heads"],
        SMALL["global_attn_indexes"],
        image_size=SMALL["image_size"],
        window_size=SMALL["window_size"],
        checkpoint=path,
    )
    if localising:
        localising_decoder.install(official_model)
        localising_decoder.install(ours)
    return official_model, ours


@pytest.fixture(scope="module")
def localising_pair(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("localising"), localising=True)


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("random"), localising=False)


def as_coco(segmentation) -> dict:
    if isinstance(segmentation, np.ndarray):
        return mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    if isinstance(segmentation["counts"], list):
        h, w = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, h, w)
    return segmentation


def assert_same_masks(reference: list[dict], ours: list[dict]) -> None:
    """Every official mask has one of ours with IoU >= 0.99 and the same scores (1e-4), and
    no mask of ours is left over."""
    assert len(ours) == len(reference)
    if not reference:
        return
    ref_rles = [as_coco(r["segmentation"]) for r in reference]
    our_rles = [as_coco(r["segmentation"]) for r in ours]
    ious = mask_utils.iou(ref_rles, our_rles, [0] * len(our_rles))
    ref_empty = mask_utils.area(ref_rles) == 0
    our_empty = mask_utils.area(our_rles) == 0
    ious[ref_empty[:, None] & our_empty[None, :]] = 1.0  # pycocotools says 0 for two empties
    unmatched = set(range(len(ours)))
    for i, ref in enumerate(reference):
        candidates = [
            j
            for j in unmatched
            if ious[i, j] >= 0.99
            and abs(ours[j]["predicted_iou"] - ref["predicted_iou"]) <= ATOL
            and np.allclose(
                ours[j]["stability_score"], ref["stability_score"], atol=ATOL, equal_nan=True
            )
            and ours[j]["crop_box"] == ref["crop_box"]
            and np.allclose(ours[j]["point_coords"], ref["point_coords"])
        ]
        values = {k: v for k, v in ref.items() if k != "segmentation"}
        assert candidates, f"official mask {i} ({values}) has no match"
        best = max(candidates, key=lambda j: ious[i, j])
        unmatched.remove(best)
        assert abs(ours[best]["area"] - ref["area"]) <= 0.01 * max(ref["area"], 1)
        assert np.abs(np.subtract(ours[best]["bbox"], ref["bbox"])).max() <= 2


def generate_both(pair, official, image, **params):
    official_model, ours = pair
    reference = official.SamAutomaticMaskGenerator(official_model, **params).generate(image)
    return reference, SamAutomaticMaskGenerator(ours, **params).generate(image)


PARAMETER_SETS = {
    "thresholds": dict(
        points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.5, box_nms_thresh=0.7
    ),
    "crops": dict(
        points_per_side=8,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.6,
        box_nms_thresh=0.7,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
    ),
    "small_regions": dict(
        points_per_side=8,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.5,
        box_nms_thresh=0.8,
        min_mask_region_area=60,
        points_per_batch=29,
    ),
    "two_crop_layers": dict(
        points_per_side=6,
        pred_iou_thresh=0.4,
        stability_score_thresh=0.4,
        box_nms_thresh=0.8,
        crop_n_layers=2,
        crop_nms_thresh=0.6,
        crop_overlap_ratio=0.25,
        min_mask_region_area=30,
    ),
}


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_matches_official_on_localised_masks(name, localising_pair, official, images):
    params = PARAMETER_SETS[name]
    reference, ours = generate_both(
        localising_pair, official, images["chelsea"], output_mode="coco_rle", **params
    )
    assert len(reference) >= 10, "the parameters must let many masks through"
    assert_same_masks(reference, ours)
    if params.get("crop_n_layers"):  # the crops contribute masks of their own
        assert len({tuple(r["crop_box"]) for r in ours}) > 1


def test_filters_and_nms_remove_masks(localising_pair, official, images):
    """The tested parameter sets do filter: without them far more masks come out."""
    _, ours = localising_pair
    loose = dict(
        points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    everything = SamAutomaticMaskGenerator(ours, **loose).generate(images["chelsea"])
    filtered = SamAutomaticMaskGenerator(ours, **PARAMETER_SETS["thresholds"]).generate(
        images["chelsea"]
    )
    assert len(everything) == 8 * 8 * 3
    assert 10 <= len(filtered) < len(everything) // 3


@pytest.mark.parametrize("output_mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_matches_official_with_random_weights(output_mode, random_pair, official, images):
    """The real (random) decoder: thresholds 0 and NMS 1.0, so every mask comes out."""
    params = dict(
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        output_mode=output_mode,
    )
    reference, ours = generate_both(random_pair, official, images["coffee"], **params)
    assert len(reference) == 6 * 6 * 3
    assert_same_masks(reference, ours)
    for ref, our in zip(reference, ours):
        assert type(our["segmentation"]) is type(ref["segmentation"])
        if output_mode == "binary_mask":
            assert our["segmentation"].dtype == bool
            assert our["segmentation"].shape == images["coffee"].shape[:2]
        else:
            assert our["segmentation"]["size"] == ref["segmentation"]["size"]
            assert type(our["segmentation"]["counts"]) is type(ref["segmentation"]["counts"])
        assert {k: type(v) for k, v in our.items()} == {k: type(v) for k, v in ref.items()}


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_a_batch_of_images_matches_the_official_one_at_a_time(
    crop_n_layers, random_pair, official, images
):
    """``generate_batch`` embeds the whole images together (the crops one at a time): each
    image's masks are the official generator's on that image alone, within the tolerance of
    :func:`assert_same_masks` (a batch may change the embedding in the last float bits)."""
    params = dict(
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        crop_n_layers=crop_n_layers,
        output_mode="coco_rle",
    )
    batch = [images["coffee"], images["chelsea"][:200], images["coffee"][::-1, :300].copy()]
    ours = SamAutomaticMaskGenerator(random_pair[1], **params).generate_batch(batch)
    official_generator = official.SamAutomaticMaskGenerator(random_pair[0], **params)
    assert len(ours) == len(batch)
    for image, records in zip(batch, ours):
        assert_same_masks(official_generator.generate(image), records)
        assert records[0]["segmentation"]["size"] == list(image.shape[:2])


def test_explicit_point_grids(localising_pair, official, images):
    rng = np.random.default_rng(0)
    grids = [rng.uniform(0.05, 0.95, size=(40, 2)), rng.uniform(0.05, 0.95, size=(12, 2))]
    reference, ours = generate_both(
        localising_pair,
        official,
        images["coffee"],
        points_per_side=None,
        point_grids=grids,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.5,
        crop_n_layers=1,
        output_mode="coco_rle",
    )
    assert len(reference) >= 10
    assert_same_masks(reference, ours)


def test_records_serialise_to_json(localising_pair, images):
    generator = SamAutomaticMaskGenerator(
        localising_pair[1], output_mode="coco_rle", **PARAMETER_SETS["thresholds"]
    )
    records = generator.generate(images["chelsea"])
    assert records
    decoded = json.loads(json.dumps(records))
    assert decoded == records
    h, w = images["chelsea"].shape[:2]
    for record in records:
        assert record["segmentation"]["size"] == [h, w]
        assert mask_utils.area(record["segmentation"]) == record["area"]


def test_max_mask_area_fraction_drops_large_masks(localising_pair, images):
    params = dict(
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        output_mode="coco_rle",
    )
    model = localising_pair[1]
    image = images["chelsea"]
    everything = SamAutomaticMaskGenerator(model, **params).generate(image)
    limit = float(np.median([r["area"] for r in everything])) / (image.shape[0] * image.shape[1])
    kept = SamAutomaticMaskGenerator(model, max_mask_area_fraction=limit, **params).generate(image)
    expected = [r for r in everything if r["area"] < limit * image.shape[0] * image.shape[1]]
    assert 0 < len(kept) < len(everything)
    assert kept == expected


@pytest.mark.parametrize(
    ("size", "layers", "overlap"),
    [
        ((300, 451), 0, 512 / 1500),
        ((300, 451), 2, 512 / 1500),
        ((1500, 2250), 3, 0.2),
        ((17, 1000), 1, 0.5),
        ((640, 480), 2, 0.0),
    ],
)
def test_crop_boxes_match_official(size, layers, overlap, official):
    amg = official.utils.amg
    assert crops.generate_crop_boxes(size, layers, overlap) == amg.generate_crop_boxes(
        size, layers, overlap
    )


@pytest.mark.parametrize(("n", "layers", "scale"), [(32, 0, 1), (32, 2, 2), (7, 2, 2), (1, 1, 1)])
def test_point_grids_match_official(n, layers, scale, official):
    ours = crops.build_all_layer_point_grids(n, layers, scale)
    reference = official.utils.amg.build_all_layer_point_grids(n, layers, scale)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        np.testing.assert_array_equal(a, b)


def test_near_crop_edge_matches_official(official):
    rng = np.random.default_rng(3)
    boxes = torch.from_numpy(rng.integers(0, 300, size=(500, 4)))
    crop_box, image_box = [100, 40, 400, 300], [0, 0, 451, 300]
    expected = official.utils.amg.is_box_near_crop_edge(boxes, crop_box, image_box)
    ours = crops.is_box_near_crop_edge(boxes, crop_box, image_box)
    assert torch.equal(ours, expected)
    assert 0 < int(ours.sum()) < len(boxes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points_per_side": None}, "exactly one of points_per_side and point_grids"),
        ({"point_grids": [np.zeros((4, 2))]}, "exactly one of points_per_side and point_grids"),
        ({"output_mode": "png"}, "output_mode must be one of"),
        ({"points_per_batch": 0}, "points_per_batch must be >= 1"),
        ({"points_per_side": 0}, "points_per_side must be >= 1"),
        (
            {"crop_n_layers": 2, "points_per_side": None, "point_grids": [np.zeros((3, 2))]},
            "needs 3 point grids",
        ),
        ({"points_per_side": None, "point_grids": [np.ones((3, 3))]}, r"point_grids\[0\]"),
        ({"max_mask_area_fraction": 1.5}, "max_mask_area_fraction"),
        (
            {"points_per_side": 7, "crop_n_layers": 3, "crop_n_points_downscale_factor": 2},
            "no points in crop layer 3",
        ),
    ],
)
def test_bad_parameters_are_refused(kwargs, message, localising_pair):
    with pytest.raises(ValueError, match=message):
        SamAutomaticMaskGenerator(localising_pair[1], **kwargs)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((20, 30), dtype=np.uint8), "H x W x 3"),
        (np.zeros((20, 30, 4), dtype=np.uint8), "H x W x 3"),
        (np.zeros((20, 30, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 30, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_images_are_refused(image, message, localising_pair):
    generator = SamAutomaticMaskGenerator(localising_pair[1], points_per_side=2)
    with pytest.raises(ValueError, match=message):
        generator.generate(image)
