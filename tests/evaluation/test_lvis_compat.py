"""lvis_compat: the official lvis package, run on current NumPy, against an independent
computation of LVIS AP from its definition and against hand-worked answers."""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import coco_fixtures
import numpy as np
import pytest
from pycocotools import mask as mask_api

from sam_lightning.evaluation import lvis_compat

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {
    "all": (0, 1e10),
    "small": (0, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, 1e10),
}


# ------------------------------------------------------ LVIS AP, from its definition


def _masks(segmentations, height, width):
    return np.array(
        [mask_api.decode(coco_fixtures.to_rle(s, height, width)) for s in segmentations],
        dtype=bool,
    ).reshape(-1, height, width)


def _match(ious, gt_ignored, threshold):
    """Greedy matching in score order: each detection takes the unmatched object of highest
    IoU >= threshold, preferring objects inside the area range (ties: the later object).
    Returns, per detection, the matched object's index or -1."""
    taken = np.zeros(len(gt_ignored), bool)
    matches = np.full(len(ious), -1)
    for d, row in enumerate(ious):
        candidates = ~taken & (row >= min(threshold, 1 - 1e-10))
        for allowed in (candidates & ~gt_ignored, candidates & gt_ignored):
            if allowed.any():
                best = np.flatnonzero(allowed & (row == row[allowed].max()))[-1]
                matches[d], taken[best] = best, True
                break
    return matches


def independent_lvis_ap(document, results, max_dets=300, image_ids=None):
    """LVIS mask AP (Gupta et al. 2019, federated): per image the top ``max_dets``
    detections; a detection counts only for categories the image is labelled for (present
    or negative); unmatched detections of not-exhaustive categories are ignored; AP is
    COCO's 101-point interpolated precision, averaged over IoU 0.50:0.95 and categories
    with ground truth. Score ties rank by image id, then by position in ``results``."""
    images = {i["id"]: i for i in document["images"]}
    image_ids = sorted(images if image_ids is None else image_ids)
    gts = defaultdict(list)
    for ann in document["annotations"]:
        gts[ann["image_id"], ann["category_id"]].append(ann)
    by_image = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    dts = defaultdict(list)
    for image_id, kept in by_image.items():
        kept = sorted(kept, key=lambda r: -r["score"])[:max_dets] if len(kept) > max_dets else kept
        present = {c for (i, c) in gts if i == image_id}
        for result in kept:
            if result["category_id"] in present | set(images[image_id]["neg_category_ids"]):
                dts[image_id, result["category_id"]].append(result)

    categories = sorted(c["id"] for c in document["categories"])
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(categories), 4))
    for k, category in enumerate(categories):
        for a, (low, high) in enumerate(AREA_RANGES.values()):
            scores, tps, fps, num_gt = [], [], [], 0
            for image_id in image_ids:
                g, d = gts[image_id, category], dts[image_id, category]
                if not g and not d:
                    continue
                info = images[image_id]
                d = sorted(d, key=lambda r: -r["score"])
                g_masks = _masks([x["segmentation"] for x in g], info["height"], info["width"])
                d_masks = _masks([x["segmentation"] for x in d], info["height"], info["width"])
                g_areas = np.array([x["area"] for x in g])
                gt_ignored = (g_areas < low) | (g_areas > high)
                inter = (d_masks[:, None] & g_masks[None]).sum((2, 3))
                union = (d_masks[:, None] | g_masks[None]).sum((2, 3))
                ious = inter / np.maximum(union, 1)
                d_areas = d_masks.sum((1, 2))
                out_of_scope = (d_areas < low) | (d_areas > high)
                out_of_scope |= category in info["not_exhaustive_category_ids"]
                num_gt += int((~gt_ignored).sum())
                scores += [x["score"] for x in d]
                tp_t, fp_t = [], []
                for threshold in IOU_THRESHOLDS:
                    matches = _match(ious, gt_ignored, threshold)
                    matched = matches >= 0
                    ignored = out_of_scope & ~matched  # matched: as its object
                    ignored[matched] = gt_ignored[matches[matched]]
                    tp_t.append(matched & ~ignored)
                    fp_t.append(~matched & ~ignored)
                tps.append(np.array(tp_t).reshape(len(IOU_THRESHOLDS), -1))
                fps.append(np.array(fp_t).reshape(len(IOU_THRESHOLDS), -1))
            if not tps or num_gt == 0:
                continue
            order = np.argsort(-np.array(scores), kind="stable")
            tp = np.cumsum(np.concatenate(tps, 1)[:, order], 1)
            fp = np.cumsum(np.concatenate(fps, 1)[:, order], 1)
            for t in range(len(IOU_THRESHOLDS)):
                recall = tp[t] / num_gt
                prec = tp[t] / (tp[t] + fp[t] + np.spacing(1))
                envelope = np.maximum.accumulate(prec[::-1])[::-1]
                index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
                sampled = np.zeros(len(RECALL_THRESHOLDS))  # recall never reached: 0
                reached = index < len(envelope)
                sampled[reached] = envelope[index[reached]]
                precision[t, :, k, a] = sampled

    def mean(values):
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    groups = {
        f: [
            k
            for k, c in enumerate(categories)
            if next(x for x in document["categories"] if x["id"] == c)["frequency"] == f
        ]
        for f in "rcf"
    }
    at = {iou: np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou)) for iou in (0.5, 0.75)}
    return {
        "ap": mean(precision[..., 0]),
        "ap50": mean(precision[at[0.5], :, :, 0]),
        "ap75": mean(precision[at[0.75], :, :, 0]),
        "ap_small": mean(precision[..., 1]),
        "ap_medium": mean(precision[..., 2]),
        "ap_large": mean(precision[..., 3]),
        "ap_rare": mean(precision[:, :, groups["r"], 0]),
        "ap_common": mean(precision[:, :, groups["c"], 0]),
        "ap_frequent": mean(precision[:, :, groups["f"], 0]),
    }


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("max_dets", [300, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_independent_computation(tmp_path, seed, max_dets):
    document = coco_fixtures.make_ground_truth(seed, lvis=True)
    results = coco_fixtures.make_predictions(seed + 20, document)
    path = coco_fixtures.write_document(tmp_path / "lvis.json", document)
    ours = lvis_compat.lvis_mask_ap(path, results, max_dets=max_dets)
    expected = independent_lvis_ap(document, results, max_dets=max_dets)
    assert ours.keys() == expected.keys()
    for key in ours:
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0 < ours["ap"] < 1


def test_image_ids_restrict_the_evaluation(tmp_path):
    document = coco_fixtures.make_ground_truth(3, lvis=True)
    results = coco_fixtures.make_predictions(4, document)
    path = coco_fixtures.write_document(tmp_path / "lvis.json", document)
    subset = [image["id"] for image in document["images"][1:4]]
    ours = lvis_compat.lvis_mask_ap(path, results, image_ids=subset)
    expected = independent_lvis_ap(document, results, image_ids=subset)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours["ap"] != lvis_compat.lvis_mask_ap(path, results)["ap"]


def hand_made():
    """Two 64x64 images; categories 1 (frequent), 2 (common), 3 (rare). Image 10: objects of
    1 and 2, 3 negative, 2 not exhaustive. Image 20: an object of 3, 1 negative."""
    square = np.zeros((64, 64), bool)
    square[8:40, 8:40] = True
    disc = np.hypot(*np.mgrid[-32:32, -32:32]) < 12
    corner = np.zeros((64, 64), bool)
    corner[50:60, 2:12] = True
    objects = [(1, 10, square), (2, 10, disc), (3, 20, square)]
    document = {
        "images": [
            {
                "id": 10,
                "height": 64,
                "width": 64,
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [2],
                "coco_url": "http://x/val2017/a.jpg",
            },
            {
                "id": 20,
                "height": 64,
                "width": 64,
                "neg_category_ids": [1],
                "not_exhaustive_category_ids": [],
                "coco_url": "http://x/val2017/b.jpg",
            },
        ],
        "categories": [
            {"id": c, "name": str(c), "frequency": f} for c, f in ((1, "f"), (2, "c"), (3, "r"))
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "area": float(m.sum()),
                "bbox": mask_api.toBbox(coco_fixtures.encode(m)).tolist(),
                "segmentation": coco_fixtures.encode(m),
            }
            for k, (c, i, m) in enumerate(objects)
        ],
    }
    exact = [
        {"image_id": i, "category_id": c, "segmentation": coco_fixtures.encode(m), "score": 0.9}
        for c, i, m in objects
    ]
    return document, exact, coco_fixtures.encode(corner)


@pytest.mark.parametrize(
    "extra, ap_frequent",
    [
        (None, 1.0),
        ((10, 2), 1.0),  # category 2 is not exhaustive on image 10: an unmatched one is ignored
        ((20, 2), 1.0),  # image 20 says nothing about category 2: the detection is dropped
        ((20, 1), 0.5),  # category 1 is negative on image 20: a false positive, ranked first
    ],
    ids=["exact", "not-exhaustive", "unlabelled", "negative"],
)
def test_federated_rules(tmp_path, extra, ap_frequent):
    document, results, corner = hand_made()
    if extra is not None:
        image_id, category = extra
        results.append(
            {"image_id": image_id, "category_id": category, "segmentation": corner, "score": 1.0}
        )
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(document))
    ours = lvis_compat.lvis_mask_ap(path, results)
    # A single object per category: precision at the first detection is 1 / (1 + eps).
    assert ours["ap_frequent"] == pytest.approx(ap_frequent, abs=1e-12)
    assert ours["ap_common"] == pytest.approx(1.0, abs=1e-12)
    assert ours["ap_rare"] == pytest.approx(1.0, abs=1e-12)
    assert ours["ap"] == pytest.approx((ap_frequent + 2) / 3, abs=1e-12)
    assert ours == pytest.approx(independent_lvis_ap(document, results), abs=1e-12)


def test_boxes_of_results_are_dropped(tmp_path):
    """A false positive of medium mask area with a tiny box: mask area puts it in the
    medium range (where it lowers AP), the box area would have ignored it there."""
    document, results, _ = hand_made()
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(document))
    block = np.zeros((64, 64), bool)
    block[20:60, 20:60] = True  # 1600 pixels: medium
    false_positive = {
        "image_id": 20,
        "category_id": 1,
        "score": 1.0,
        "segmentation": coco_fixtures.encode(block),
    }  # 1 is negative on 20
    plain = lvis_compat.lvis_mask_ap(path, [*results, false_positive])
    boxed = [{**r, "bbox": [0.0, 0.0, 2.0, 2.0]} for r in [*results, false_positive]]
    before = copy.deepcopy(boxed)
    assert lvis_compat.lvis_mask_ap(path, boxed) == plain
    assert plain["ap_medium"] < 1 - 1e-9
    assert boxed == before


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
def test_lvis_needs_the_compatibility_layer_and_it_is_scoped(tmp_path):
    import lvis

    document, results, _ = hand_made()
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(document))
    gt = lvis.LVIS(str(path))
    evaluator = lvis.LVISEval(gt, lvis.LVISResults(gt, copy.deepcopy(results)), "segm")
    evaluator.evaluate()
    with pytest.raises(AttributeError, match="float"):
        evaluator.accumulate()  # lvis 0.5.3 alone, on NumPy >= 1.24
    original = lvis.eval.np
    with lvis_compat.numpy_compat():
        assert lvis.eval.np is not np and lvis.eval.np.float is float
        assert lvis.eval.np.cumsum is np.cumsum
        evaluator.accumulate()
    assert lvis.eval.np is original is np
    assert not hasattr(np, "float")
    assert evaluator.eval["precision"].max() == pytest.approx(1.0, abs=1e-12)


def test_bad_inputs_raise(tmp_path):
    document, results, _ = hand_made()
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="no results"):
        lvis_compat.lvis_mask_ap(path, [])
    with pytest.raises(ValueError, match="not in the file"):
        lvis_compat.lvis_mask_ap(path, [{**results[0], "image_id": 99}])
    with pytest.raises(ValueError, match="compressed RLE"):
        lvis_compat.lvis_mask_ap(path, [{**results[0], "segmentation": [[1, 1, 5, 1, 5, 5]]}])
    with pytest.raises(ValueError, match="image_ids"):
        lvis_compat.lvis_mask_ap(path, results, image_ids=[10, 99])
