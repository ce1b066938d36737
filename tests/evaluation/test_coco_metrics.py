"""coco_metrics against pycocotools' COCOeval run directly on the same files or documents:
the native back-end bit for bit on many generated cases, faster-coco-eval with identical
recall and precision up to the last bit."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import coco_fixtures
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_lightning.evaluation import coco_metrics, coco_native

# pycocotools 2.0.x's decode passes copy=False to NumPy 2's __array__: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SEEDS = (0, 1, 2)


def reference_eval(gt_path, results_path, use_cats, max_dets, image_ids=None) -> COCOeval:
    """pycocotools on the files, as a user would run it (LVIS files lack ``iscrowd``, which
    COCOeval reads: it is added here as 0)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        for ann in gt.dataset["annotations"]:
            ann.setdefault("iscrowd", 0)
        dt = gt.loadRes(str(results_path))
        evaluator = COCOeval(gt, dt, "segm")
        evaluator.params.useCats = use_cats
        evaluator.params.maxDets = list(max_dets)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def write_case(tmp_path, seed, lvis, category_id=None, per_image=12):
    document = coco_fixtures.make_ground_truth(seed, lvis=lvis)
    results = coco_fixtures.make_predictions(
        seed + 50, document, per_image=per_image, category_id=category_id
    )
    gt_path = coco_fixtures.write_document(tmp_path / "gt.json", document)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    return document, results, gt_path, results_path


def cocoeval(document, results, use_cats, max_dets, image_ids=None) -> COCOeval:
    """pycocotools on in-memory copies (an empty result list, which ``loadRes`` refuses,
    as a results COCO without annotations)."""
    document, results = copy.deepcopy((document, results))
    for ann in document["annotations"]:
        ann.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = document
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = {**document, "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "segm")
        evaluator.params.useCats = use_cats
        evaluator.params.maxDets = list(max_dets)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def square(height: int, width: int, side: int, rng: np.random.Generator) -> dict:
    """A compressed RLE of a ``side`` x ``side`` square (area exactly ``side**2``)."""
    mask = np.zeros((height, width), dtype=bool)
    y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    mask[y : y + side, x : x + side] = True
    return coco_fixtures.encode(mask)


def random_case(seed: int) -> tuple[dict, list[dict]]:
    """Ground truth and results with the awkward parts of COCOeval: crowd regions, images
    without ground truth or without results, categories without ground truth, tied scores,
    areas on the range bounds (32**2, 96**2; ground truth and results), a ground-truth id
    of 0 (COCOeval's "unmatched"), more results than small budgets allow."""
    rng = np.random.default_rng(seed)
    document = coco_fixtures.make_ground_truth(
        seed,
        num_images=int(rng.integers(1, 7)),
        num_categories=int(rng.integers(1, 9)),
        lvis=bool(rng.integers(2)),
        objects=(0, int(rng.integers(1, 10))),
    )
    results = coco_fixtures.make_predictions(
        seed + 1000, document, per_image=int(rng.integers(0, 25))
    )
    images = document["images"]
    if len(images) > 1:  # one image without results
        dropped = images[int(rng.integers(len(images)))]["id"]
        results = [r for r in results if r["image_id"] != dropped]
    category_ids = [c["id"] for c in document["categories"]]
    for _ in range(int(rng.integers(0, 4))):
        info = images[int(rng.integers(len(images)))]
        side = int(rng.choice([32, 96]))
        results.append({
            "image_id": info["id"],
            "category_id": int(rng.choice(category_ids)),
            "segmentation": square(info["height"], info["width"], side, rng),
            "score": 0.5,
        })
    annotations = document["annotations"]
    for ann in rng.choice(annotations, min(3, len(annotations)), replace=False):
        ann["area"] = float(rng.choice([32**2, 96**2, ann["area"]]))
    if annotations and rng.random() < 0.3:  # an object annotated twice: equal IoUs
        twin = annotations[int(rng.integers(len(annotations)))]
        annotations.append({**twin, "id": len(annotations) + 1})
    if annotations and rng.random() < 0.3:
        annotations[int(rng.integers(len(annotations)))]["id"] = 0
    return document, results


CASES = range(40)


@pytest.mark.parametrize("seed", CASES)
def test_native_is_cocoeval_bit_for_bit(seed):
    document, results = random_case(seed)
    images = [image["id"] for image in document["images"]]
    subset = images[: max(1, len(images) // 2)]
    for use_cats, max_dets, image_ids in [
        (1, (1, 10, 100), None),
        (1, (1, 2, 4), subset),
        (0, (1, 5, 1000), None),
    ]:
        reference = cocoeval(document, results, use_cats, max_dets, image_ids)
        precision, recall = coco_metrics.accumulate(
            document,
            results,
            use_cats=bool(use_cats),
            max_dets=max_dets,
            image_ids=image_ids,
            backend="native",
        )
        assert np.array_equal(precision, reference.eval["precision"])
        assert np.array_equal(recall, reference.eval["recall"])
        if use_cats and image_ids is None:
            stats = coco_metrics.mask_stats(document, results)
            assert list(stats) == list(coco_metrics.MASK_STATS)
            assert list(stats.values()) == reference.stats.tolist()


def test_native_cases_exercise_cocoeval():
    """The generated cases reach every part of the accumulation: precision strictly between
    0 and 1, categories without ground truth (-1), budgets that cut results off."""
    seen = {"fraction": False, "absent": False, "cut": False}
    for seed in CASES:
        document, results = random_case(seed)
        precision, recall = coco_metrics.accumulate(
            document, results, use_cats=True, max_dets=(1, 2, 4), backend="native"
        )
        seen["fraction"] |= bool(((precision > 0) & (precision < 1)).any())
        seen["absent"] |= bool((precision == -1).all(axis=(0, 1, 3, 4)).any())
        seen["cut"] |= bool((recall[..., 0] < recall[..., 2]).any())
    assert all(seen.values()), seen


@pytest.mark.parametrize("use_cats", [1, 0], ids=["per-category", "class-agnostic"])
def test_equal_ious_go_to_the_later_ground_truth(use_cats):
    """A result on an object annotated twice takes the later annotation in COCOeval's order
    (by category, then file order); one annotation has the id 0, so the order decides
    whether the result counts."""
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:25, 10:40] = True
    rle = coco_fixtures.encode(mask)
    # Class-agnostic, the file order (category 5, then 3) is not COCOeval's order.
    categories = (3, 3) if use_cats else (5, 3)
    precisions = []
    for ids in ((0, 7), (7, 0)):
        document = {
            "images": [{"id": 1, "height": 40, "width": 50, "file_name": "a.png"}],
            "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
            "annotations": [
                {"id": i, "image_id": 1, "category_id": c, "segmentation": rle,
                 "area": float(mask.sum()), "iscrowd": 0}
                for i, c in zip(ids, categories)
            ],
        }
        results = [{"image_id": 1, "category_id": 3, "segmentation": rle, "score": 0.9}]
        reference = cocoeval(document, results, use_cats, (1, 10, 100))
        precision, recall = coco_metrics.accumulate(
            document, results, use_cats=bool(use_cats), max_dets=(1, 10, 100), backend="native"
        )
        assert np.array_equal(precision, reference.eval["precision"])
        assert np.array_equal(recall, reference.eval["recall"])
        precisions.append(precision)
    assert not np.array_equal(*precisions)


def test_native_parameters_are_cocoevals():
    params = COCOeval(iouType="segm").params
    assert np.array_equal(coco_native.IOU_THRESHOLDS, params.iouThrs)
    assert np.array_equal(coco_native.RECALL_THRESHOLDS, params.recThrs)
    assert np.array_equal(coco_native.AREA_RANGES, np.array(params.areaRng, dtype=float))
    assert coco_metrics.AREAS == tuple(params.areaRngLbl)


@pytest.mark.parametrize("seed", SEEDS)
def test_mask_ap_equals_cocoeval(tmp_path, seed):
    document, results, gt_path, results_path = write_case(tmp_path, seed, lvis=False)
    stats = reference_eval(gt_path, results_path, 1, (1, 10, 100)).stats
    ours = coco_metrics.mask_stats(document, results)
    assert list(ours.values()) == stats.tolist()
    ap = coco_metrics.mask_ap(document, results)
    assert list(ap) == ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]
    assert list(ap.values()) == stats[:6].tolist()
    assert 0 < ap["ap"] < 1


@pytest.mark.parametrize("lvis", [False, True], ids=["coco", "lvis"])
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_proposal_ar_equals_cocoeval(tmp_path, seed, lvis):
    # category_id 3: the fixtures' first category (class-agnostic COCOeval gathers detections
    # by the ground truth's categories, so a plain run needs one of them).
    # 400 proposals per image: the budgets of 100 and 300 cut some matches off.
    document, results, gt_path, results_path = write_case(
        tmp_path, seed, lvis, category_id=3, per_image=400
    )
    stats = reference_eval(gt_path, results_path, 0, (100, 300, 1000)).stats
    ours = coco_metrics.proposal_ar(document, results)
    keys = ["ar@100", "ar@300", "ar@1000", "ar@1000_small", "ar@1000_medium", "ar@1000_large"]
    assert [ours[k] for k in keys] == stats[6:12].tolist()
    assert 0 < ours["ar@100"] < ours["ar@1000"] < 1
    if not lvis:
        assert not any(k.endswith(("frequent", "common", "rare")) for k in ours)
        return
    groups = coco_metrics.frequency_groups(document)
    for group, category_ids in groups.items():
        restricted = copy.deepcopy(document)
        restricted["annotations"] = [
            a for a in restricted["annotations"] if a["category_id"] in category_ids
        ]
        path = coco_fixtures.write_document(tmp_path / f"gt_{group}.json", restricted)
        expected = reference_eval(path, results_path, 0, (100, 300, 1000)).stats[8]
        assert ours[f"ar@1000_{group}"] == expected


def test_class_agnostic_ignores_result_categories(tmp_path):
    document, results, _, _ = write_case(tmp_path, 0, lvis=True, category_id=3)
    relabelled = [{**r, "category_id": 999} for r in results]  # not a ground-truth category
    for backend in coco_metrics.BACKENDS[1:]:
        ours = coco_metrics.proposal_ar(document, relabelled, backend=backend)
        assert ours == coco_metrics.proposal_ar(document, results, backend=backend)


@pytest.mark.parametrize("lvis", [False, True], ids=["coco", "lvis"])
@pytest.mark.parametrize("use_cats", [1, 0], ids=["per-category", "class-agnostic"])
@pytest.mark.parametrize("seed", SEEDS)
def test_faster_coco_eval_recall_is_identical(seed, use_cats, lvis):
    document = coco_fixtures.make_ground_truth(seed, lvis=lvis)
    results = coco_fixtures.make_predictions(seed + 7, document)
    max_dets = (1, 10, 100) if use_cats else coco_metrics.PROPOSAL_MAX_DETS
    outputs = {
        backend: coco_metrics.accumulate(
            document, results, use_cats=bool(use_cats), max_dets=max_dets, backend=backend
        )
        for backend in ("pycocotools", "faster_coco_eval")
    }
    (p_ref, r_ref), (p_fast, r_fast) = outputs["pycocotools"], outputs["faster_coco_eval"]
    assert np.array_equal(r_ref, r_fast)
    assert (r_ref > 0).any()
    # Precision: equal except where pycocotools divides tp = 1 by 1 + eps.
    differ = p_ref != p_fast
    assert np.all(p_ref[differ] == 1 / (1 + np.spacing(1))) and np.all(p_fast[differ] == 1.0)
    if not lvis:
        assert coco_metrics.proposal_ar(document, results, backend="pycocotools") == (
            coco_metrics.proposal_ar(document, results, backend="faster_coco_eval")
        )


def test_faster_coco_eval_ap_differs_in_the_last_bit():
    """Why ``auto`` does not take faster-coco-eval for AP: its AP differs (if a release
    makes it identical, this fails and AUTO_BACKEND["ap"] may be reconsidered)."""
    document = coco_fixtures.make_ground_truth(2)
    results = coco_fixtures.make_predictions(9, document)
    ref = coco_metrics.mask_ap(document, results, backend="pycocotools")
    fast = coco_metrics.mask_ap(document, results, backend="faster_coco_eval")
    assert coco_metrics.mask_ap(document, results) == ref  # auto
    assert coco_metrics.mask_ap(document, results, backend="native") == ref
    gaps = [abs(ref[k] - fast[k]) for k in ref]
    assert max(gaps) <= 4 * np.spacing(1)
    precision = {
        b: coco_metrics.accumulate(
            document, results, use_cats=True, max_dets=(1, 10, 100), backend=b
        )[0]
        for b in ("pycocotools", "faster_coco_eval")
    }
    assert not np.array_equal(precision["pycocotools"], precision["faster_coco_eval"])


@pytest.mark.parametrize("backend", coco_metrics.BACKENDS[1:])
def test_image_ids_restrict_the_evaluation(tmp_path, backend):
    document, results, gt_path, results_path = write_case(tmp_path, 1, lvis=False, category_id=3)
    subset = [image["id"] for image in document["images"][:3]]
    stats = reference_eval(gt_path, results_path, 0, (100, 300, 1000), image_ids=subset).stats
    ours = coco_metrics.proposal_ar(document, results, image_ids=subset, backend=backend)
    assert ours["ar@1000"] == stats[8]
    assert ours["ar@1000"] != coco_metrics.proposal_ar(document, results)["ar@1000"]


def test_result_boxes_do_not_decide_the_area_range():
    document = coco_fixtures.make_ground_truth(0)
    results = coco_fixtures.make_predictions(3, document)
    boxed = [{**r, "bbox": [0.0, 0.0, 1.0, 1.0]} for r in results]  # tiny boxes, any mask
    assert coco_metrics.mask_ap(document, boxed) == coco_metrics.mask_ap(document, results)
    assert all("bbox" in r for r in boxed)  # inputs are left alone


@pytest.mark.parametrize("backend", coco_metrics.BACKENDS[1:])
def test_no_results_score_zero(backend):
    document = coco_fixtures.make_ground_truth(0, lvis=True)
    ar = coco_metrics.proposal_ar(document, [], backend=backend)
    assert set(ar.values()) == {0.0}
    assert coco_metrics.mask_ap(document, [], backend=backend)["ap"] == 0


@pytest.mark.parametrize("backend", coco_metrics.BACKENDS[1:])
def test_no_images_or_no_ground_truth_score_minus_one(backend):
    document = coco_fixtures.make_ground_truth(0)
    results = coco_fixtures.make_predictions(1, document)
    none = coco_metrics.mask_stats(document, results, image_ids=[], backend=backend)
    assert set(none.values()) == {-1.0}
    empty = {**document, "annotations": []}
    assert set(coco_metrics.mask_stats(empty, results, backend=backend).values()) == {-1.0}


def test_inputs_are_not_modified():
    document = coco_fixtures.make_ground_truth(1, lvis=True)
    results = coco_fixtures.make_predictions(4, document, category_id=3)
    before = copy.deepcopy((document, results))
    for backend in coco_metrics.BACKENDS[1:]:
        coco_metrics.proposal_ar(document, results, backend=backend)
        coco_metrics.mask_ap(document, results, backend=backend)
    assert (document, results) == before


def test_bad_inputs_raise():
    document = coco_fixtures.make_ground_truth(0)
    results = coco_fixtures.make_predictions(1, document)
    with pytest.raises(ValueError, match="backend"):
        coco_metrics.mask_ap(document, results, backend="fast")
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_metrics.mask_ap(document, [{**results[0], "image_id": -5}])
    with pytest.raises(ValueError, match="compressed RLE"):
        coco_metrics.mask_ap(document, [{**results[0], "segmentation": [[0, 0, 1, 1, 2, 0]]}])
    with pytest.raises(ValueError, match="score"):
        coco_metrics.mask_ap(document, [{k: v for k, v in results[0].items() if k != "score"}])
    with pytest.raises(ValueError, match="image_ids"):
        coco_metrics.mask_ap(document, results, image_ids=[12345])
    with pytest.raises(ValueError, match="frequency"):
        coco_metrics.proposal_ar(document, results, by_frequency=True)
    annotations = document["annotations"]
    duplicated = {**document, "annotations": [*annotations, {**annotations[0]}]}
    nameless = {k: v for k, v in annotations[0].items() if k != "id"}
    anonymous = {**document, "annotations": [nameless]}
    for backend in coco_metrics.BACKENDS:
        with pytest.raises(ValueError, match="is not unique"):
            coco_metrics.mask_ap(duplicated, results, backend=backend)
        with pytest.raises(ValueError, match="has no 'id'"):
            coco_metrics.mask_ap(anonymous, results, backend=backend)


def test_dataset_format_and_groups(tmp_path):
    coco = coco_fixtures.make_ground_truth(0)
    lvis = coco_fixtures.make_ground_truth(0, lvis=True)
    assert coco_metrics.dataset_format(coco) == "coco"
    assert coco_metrics.dataset_format(lvis) == "lvis"
    groups = coco_metrics.frequency_groups(lvis)
    assert sorted(sum(groups.values(), [])) == sorted(c["id"] for c in lvis["categories"])
    assert groups["frequent"] == [c["id"] for c in lvis["categories"] if c["frequency"] == "f"]
    restricted = coco_metrics.restrict_annotations(lvis, groups["rare"])
    assert restricted["categories"] == lvis["categories"]
    assert {a["category_id"] for a in restricted["annotations"]} <= set(groups["rare"])
    path = coco_fixtures.write_document(tmp_path / "lvis.json", lvis)
    assert coco_metrics.load_ground_truth(path) == lvis
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="instances file"):
        coco_metrics.load_ground_truth(tmp_path / "bad.json")


def test_image_files_and_reading(tmp_path):
    coco = coco_fixtures.make_ground_truth(0, num_images=3)
    lvis = coco_fixtures.make_ground_truth(0, num_images=3, lvis=True)
    coco_fixtures.write_images(tmp_path / "coco", coco)
    coco_fixtures.write_images(tmp_path / "lvis", lvis)  # <root>/val2017/<name>
    files = coco_metrics.image_files(coco, tmp_path / "coco")
    assert [p for _, p in files] == [tmp_path / "coco" / i["file_name"] for i in coco["images"]]
    files = coco_metrics.image_files(lvis, tmp_path / "lvis")
    assert [p.parent.name for _, p in files] == ["val2017"] * 3
    coco_metrics.check_image_files(files)
    read = list(coco_metrics.read_images(files))
    assert [info["id"] for info, _ in read] == [i["id"] for i in lvis["images"]]
    assert all(image.shape == (i["height"], i["width"], 3) for i, image in read)
    # LVIS images may also lie directly in the root, as LvisDataset accepts.
    flat = files[0][1].rename(tmp_path / "lvis" / files[0][1].name)
    assert coco_metrics.image_files(lvis, tmp_path / "lvis")[0][1] == flat
    files[1][1].unlink()
    with pytest.raises(FileNotFoundError, match="1 of 3 image files not found"):
        coco_metrics.check_image_files(coco_metrics.image_files(lvis, tmp_path / "lvis"))
    wrong = [({**files[2][0], "height": 7}, files[2][1])]
    with pytest.raises(ValueError, match="height x width"):
        list(coco_metrics.read_images(wrong))
    assert coco_metrics.resolve_format("auto", lvis) == "lvis"
    assert coco_metrics.resolve_format(None, coco) == "coco"
    assert coco_metrics.resolve_format("coco", lvis) == "coco"
    with pytest.raises(ValueError, match="data.format"):
        coco_metrics.resolve_format("voc", coco)
