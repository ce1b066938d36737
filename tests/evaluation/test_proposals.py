"""Object proposals (App. D.3) on a small model whose masks localise (the stand-in decoder of
tests/inference): the protocol's steps, and AR equal to COCOeval's on the saved
predictions.json."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import coco_fixtures
import numpy as np
import pytest
import torch
from test_coco_metrics import reference_eval

from sam_lightning import build_sam
from sam_lightning.evaluation import coco_metrics, proposals
from sam_lightning.evaluation.settings import EvalJob

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
import localising_decoder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SMALL = {"points_per_side": 8, "points_per_batch": 64}  # 192 candidate masks per image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    sam = build_sam("vit_tiny", image_size=256)
    localising_decoder.install(sam)
    return sam.eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).integers(0, 256, (150, 200, 3), dtype=np.uint8)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of XYXY boxes, every pair."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_generator_is_configured_as_in_the_paper(model):
    generator = proposals.proposal_generator(model)
    assert len(generator.point_grids) == 1 and len(generator.point_grids[0]) == 64 * 64
    assert generator.crop_n_layers == 0 and generator.min_mask_region_area == 0
    assert generator.pred_iou_thresh == 0 and generator.stability_score_thresh == 0
    assert generator.box_nms_thresh == 0.9


def test_ranked_by_mean_of_iou_and_stability_then_truncated(model, image):
    generator = proposals.proposal_generator(model, **SMALL)
    records = generator.generate(image)  # the generator's own records, independently ranked
    means = np.array([(r["predicted_iou"] + r["stability_score"]) / 2 for r in records])
    order = np.argsort(-means, kind="stable")[:40]
    rles, scores = proposals.propose(generator, image, max_proposals=40)
    assert rles.counts_strings() == [records[i]["segmentation"]["counts"] for i in order]
    np.testing.assert_allclose(scores.numpy(), means[order], rtol=1e-6)
    assert len(records) > 40  # truncation did something
    # No filtering by predicted IoU or stability: weak masks are proposals too.
    assert min(r["predicted_iou"] for r in records) < 0.5
    assert min(r["stability_score"] for r in records) < 0.9


def test_box_nms_at_0_9(model, image):
    records = proposals.proposal_generator(model, **SMALL).generate(image)
    boxes = np.array([r["bbox"] for r in records], dtype=float)
    boxes[:, 2:] += boxes[:, :2]
    overlap = box_iou(boxes, boxes)
    np.fill_diagonal(overlap, 0)
    assert overlap.max() <= 0.9
    without = proposals.proposal_generator(model, nms_thresh=1.0, **SMALL).generate(image)
    assert len(without) > len(records)


@pytest.fixture(scope="module", params=["lvis", "coco"])
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    document = coco_fixtures.make_ground_truth(5, lvis=request.param == "lvis")
    coco_fixtures.write_images(root / "images", document)
    coco_fixtures.write_document(root / "gt.json", document)
    data = {"images": str(root / "images"), "annotations": str(root / "gt.json")}
    return request.param, document, data


def test_ar_equals_cocoeval_on_the_saved_predictions(model, dataset, tmp_path):
    fmt, document, data = dataset
    settings = {"task": "proposals_lvis", **SMALL, "max_proposals": 120}
    metrics = proposals.run_from_config(
        EvalJob(lambda: model, settings, data, tmp_path, "cpu", False)
    )
    predictions_path = tmp_path / "predictions.json"
    predictions = json.loads(predictions_path.read_text())
    per_image = np.bincount([p["image_id"] for p in predictions])
    assert per_image.max() == 120
    assert {p["category_id"] for p in predictions} == {3}  # the smallest ground-truth id

    stats = reference_eval(data["annotations"], predictions_path, 0, (100, 300, 1000)).stats
    keys = ["ar@100", "ar@300", "ar@1000", "ar@1000_small", "ar@1000_medium", "ar@1000_large"]
    assert [metrics[k] for k in keys] == stats[6:12].tolist()
    assert metrics["ar@1000"] > 0
    groups = {"ar@1000_frequent", "ar@1000_common", "ar@1000_rare"}
    if fmt == "coco":
        assert not groups & set(metrics)
        return
    for group, category_ids in coco_metrics.frequency_groups(document).items():
        restricted = copy.deepcopy(document)
        restricted["annotations"] = [
            a for a in restricted["annotations"] if a["category_id"] in category_ids
        ]
        path = coco_fixtures.write_document(tmp_path / f"gt_{group}.json", restricted)
        expected = reference_eval(path, predictions_path, 0, (100, 300, 1000)).stats[8]
        assert metrics[f"ar@1000_{group}"] == expected


def test_max_images_evaluates_the_first_images(model, dataset, tmp_path):
    _, document, data = dataset
    settings = {**SMALL, "max_images": 2}
    metrics = proposals.run_from_config(
        EvalJob(lambda: model, settings, data, tmp_path, "cpu", False)
    )
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    first = [image["id"] for image in document["images"][:2]]
    assert sorted({p["image_id"] for p in predictions}) == first
    assert metrics == coco_metrics.proposal_ar(document, predictions, image_ids=first)


def test_bad_data_fails_before_the_model_is_built(dataset, tmp_path):
    _, _, data = dataset

    def get_model():
        raise AssertionError("the model was built before the data were checked")

    with pytest.raises(FileNotFoundError, match="image files not found"):
        proposals.run_from_config(
            EvalJob(get_model, {}, {**data, "images": str(tmp_path)}, tmp_path, "cpu")
        )
    with pytest.raises(ValueError, match="unknown setting"):
        proposals.run_from_config(EvalJob(get_model, {"points_per_sid": 8}, data, tmp_path, "cpu"))
    with pytest.raises(ValueError, match="data.format"):
        proposals.run_from_config(
            EvalJob(get_model, {}, {**data, "format": "voc"}, tmp_path, "cpu")
        )


@pytest.mark.slow
def test_paper_settings_on_a_coco_size_image(model):
    """App. D.3's defaults (64x64 grid, NMS 0.9, top 1000) on a 480x640 image (~1 min)."""
    image = np.random.default_rng(4).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    generator = proposals.proposal_generator(model)
    candidates = generator.generate_candidates(image)
    rles, scores = proposals.rank(candidates)
    assert len(candidates) > 1000 and len(rles) == 1000
    assert (scores[:-1] >= scores[1:]).all()
    means = (candidates.iou_preds + candidates.stability_score) / 2
    assert scores[-1] == means.sort(descending=True).values[999]
    assert candidates.iou_preds.min() < 0.5  # not filtered
