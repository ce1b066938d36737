"""The single-point / interactive harness (App. D.1): click placement against its definition
(scipy's exact distance transform), the batched click session against the predictor's
single-prompt API, and the metrics against pycocotools on the saved predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from sam_lightning.data.samples import SampleTransform, collate
from sam_lightning.data.synthetic import SyntheticShapes
from sam_lightning.evaluation import points
from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.inference.clicks import corrective_clicks, interior_points
from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling.build import build_sam
from sam_lightning.ops import rle_encode
from sam_lightning.training.module import SamTrainingModule
from sam_lightning.training.validation import corrective_click_ious

# ------------------------------------------------------------------------ the definition


def deepest(region: np.ndarray, excluded: np.ndarray | None = None) -> tuple[list[int], float]:
    """``[x, y]`` of the pixel of ``region`` farthest from its boundary (outside the frame
    counts as outside; first in raster order) and its distance; ``excluded`` pixels are not
    chosen."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    if excluded is not None:
        depth[excluded] = 0
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return [int(x), int(y)], float(depth.max())


def next_click(pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray) -> tuple[list[int], int]:
    """The click RITM's protocol gives: in the deeper of the false negatives (positive) and
    the false positives (negative; it wins ties); label -1 without an error left."""
    fn_point, fn_depth = deepest(gt & ~pred, clicked)
    fp_point, fp_depth = deepest(~gt & pred, clicked)
    if max(fn_depth, fp_depth) == 0:
        return [0, 0], -1
    return (fn_point, 1) if fn_depth > fp_depth else (fp_point, 0)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def hand_made_masks(h: int = 48, w: int = 64) -> np.ndarray:
    """A square, an L, a ring, a box touching the frame, a one-pixel object."""
    l_shape = box(h, w, 5, 40, 5, 15) | box(h, w, 30, 40, 5, 50)
    ring = box(h, w, 4, 44, 10, 54) & ~box(h, w, 14, 34, 20, 44)
    pixel = box(h, w, 20, 21, 30, 31)
    return np.stack([box(h, w, 10, 31, 20, 41), l_shape, ring, box(h, w, 0, 20, 40, 64), pixel])


def test_first_click_is_the_deepest_pixel_of_the_object():
    gt = hand_made_masks()
    expected = [deepest(m)[0] for m in gt]
    assert interior_points(torch.from_numpy(gt)).tolist() == expected
    assert expected[0] == [30, 20]  # the square's centre
    assert expected[4] == [30, 20]  # the only pixel


@pytest.mark.parametrize(
    "pred_box, label",
    [
        ((10, 31, 20, 31), 1),  # the prediction covers the left half: a positive click
        ((5, 36, 15, 46), 0),  # a larger box: the ring of false positives is the deeper error
        ((10, 31, 20, 41), -1),  # exact: nothing to correct
        ((10, 31, 30, 51), 0),  # shifted by 10: false negatives and positives equally deep
    ],
)
def test_corrective_click_is_the_deepest_error_pixel(pred_box, label):
    h, w = 48, 64
    gt = box(h, w, 10, 31, 20, 41)
    pred = box(h, w, *pred_box)
    clicked = np.zeros((h, w), dtype=bool)
    clicked[20, 30] = True  # click 1; pixels already clicked are not chosen again
    expected_point, expected_label = next_click(pred, gt, clicked)
    assert expected_label == label
    point, got = corrective_clicks(*(torch.from_numpy(m[None]) for m in (pred, gt, clicked)))
    assert got.tolist() == [expected_label]
    if label >= 0:
        assert point[0].tolist() == expected_point


def test_corrective_clicks_of_many_masks_in_one_call():
    gt = hand_made_masks()
    rng = np.random.default_rng(0)
    pred = rng.random(gt.shape) < 0.3
    clicked = np.zeros_like(gt)
    clicked[np.arange(len(gt)), 20, 30] = True
    point, label = corrective_clicks(*(torch.from_numpy(a) for a in (pred, gt, clicked)))
    for k in range(len(gt)):
        expected_point, expected_label = next_click(pred[k], gt[k], clicked[k])
        assert label[k] == expected_label
        assert point[k].tolist() == expected_point


# -------------------------------------------------------------------- the click session


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    torch.manual_seed(0)
    return SamPredictor(build_sam("vit_tiny", image_size=256))


def scene(masks: np.ndarray, seed: int) -> np.ndarray:
    """A noisy image with each mask painted in a flat colour."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, (*masks.shape[1:], 3), dtype=np.uint8)
    for mask in masks:
        image[mask] = rng.integers(0, 256, 3)
    return image


def test_session_clicks_follow_the_definition(predictor):
    gt = hand_made_masks()
    predictor.set_image(scene(gt, 0))
    session = points.simulate_clicks(predictor, torch.from_numpy(gt), num_clicks=2)

    assert session.ious.shape == (5, 2) and session.first_masks.shape == gt.shape
    first = session.clicks[:, 0].tolist()
    assert first == [deepest(m)[0] for m in gt] and session.labels[:, 0].tolist() == [1] * 5
    pred = session.first_masks.numpy()
    for k in range(len(gt)):
        clicked = np.zeros(gt.shape[1:], dtype=bool)
        clicked[first[k][1], first[k][0]] = True
        expected_point, expected_label = next_click(pred[k], gt[k], clicked)
        assert session.labels[k, 1] == expected_label
        if expected_label >= 0:
            assert session.clicks[k, 1].tolist() == expected_point
        inter, union = (pred[k] & gt[k]).sum(), (pred[k] | gt[k]).sum()
        assert session.ious[k, 0].item() == inter / union
    assert (session.oracle_ious >= session.ious[:, 0]).all()
    assert set(session.labels[:, 1].tolist()) == {0, 1}  # both kinds of corrective clicks


def test_session_equals_the_single_prompt_predictor(predictor):
    """Each object's session replayed one prompt at a time through ``SamPredictor.predict``
    (3 masks and the most confident after click 1, then all clicks so far plus the previous
    low-resolution logits, one mask) gives the same masks, scores and IoUs."""
    gt = hand_made_masks()
    predictor.set_image(scene(gt, 1))
    session = points.simulate_clicks(predictor, torch.from_numpy(gt), num_clicks=4)
    for k in range(len(gt)):
        coords = session.clicks[k].numpy()
        labels = session.labels[k].numpy()
        masks, scores, low_res = predictor.predict(coords[:1], labels[:1], multimask_output=True)
        best = int(np.argmax(scores))
        np.testing.assert_array_equal(masks[best], session.first_masks[k].numpy())
        assert scores[best] == pytest.approx(session.first_scores[k].item(), abs=1e-5)
        oracle = max((m & gt[k]).sum() / (m | gt[k]).sum() for m in masks)
        assert oracle == pytest.approx(session.oracle_ious[k].item(), abs=1e-12)
        logits = low_res[best : best + 1]
        for n in range(1, 4):
            if labels[n] < 0:  # perfect already: no more clicks, the IoU stays
                assert session.ious[k, n] == session.ious[k, n - 1]
                continue
            masks, _, logits = predictor.predict(
                coords[: n + 1], labels[: n + 1], mask_input=logits, multimask_output=False
            )
            iou = (masks[0] & gt[k]).sum() / (masks[0] | gt[k]).sum()
            assert iou == pytest.approx(session.ious[k, n].item(), abs=1e-12)


def test_session_rejects_bad_arguments(predictor):
    gt = torch.from_numpy(hand_made_masks())
    predictor.set_image(scene(gt.numpy(), 0))
    with pytest.raises(ValueError, match="at least 1"):
        points.simulate_clicks(predictor, gt, num_clicks=0)
    with pytest.raises(ValueError, match="gt_masks are"):
        points.simulate_clicks(predictor, gt[:, :10], num_clicks=1)


@pytest.mark.filterwarnings("ignore:You are trying to")  # self.log without a Trainer
def test_training_validation_reports_the_harness_miou():
    """The same random-weight SAM and synthetic images through the training validation
    (``SamTrainingModule.validation_step``: ``val/miou_1pt`` and ``val/miou_<k>clicks``) and
    through this harness (:func:`points.evaluate_points`: ``miou_<k>pt``) give every object
    the same IoU after every click, so the same mIoU after k clicks. The images are of the
    model's input size, so that the validation's frame (the padded input) and the harness's
    (the original image) are one."""
    size, clicks = 64, 5
    torch.manual_seed(0)
    module = SamTrainingModule("vit_nano", image_size=size, val_clicks=clicks).eval()
    dataset = SyntheticShapes(3, image_size=size, seed=3)
    transform = SampleTransform(image_size=size, max_masks=1000, max_mask_fraction=1.0)
    validation: dict[int, torch.Tensor] = {}  # annotation id: IoU after each click
    for index in range(len(dataset)):
        batch = collate([transform(dataset[index], np.random.default_rng(index))])
        module.validation_step(batch, batch_index=1)  # not 0: no example images to log
        with torch.no_grad():
            embeddings = module.model.encode_images(batch["images"])
        ious = corrective_click_ious(
            module.model, embeddings, batch["masks"], batch["image_index"], clicks
        )
        validation.update(zip(batch["annotation_ids"].tolist(), ious))
    logged = [
        module.val_ious[f"{k}clicks" if k > 1 else "1pt"].compute().item()
        for k in range(1, clicks + 1)
    ]

    metrics, records = points.evaluate_points(
        SamPredictor(module.model), dataset, num_clicks=range(1, clicks + 1), progress=False
    )
    harness = {r["gt_id"]: torch.tensor(r["ious"]) for r in records}
    assert sorted(harness) == sorted(validation) and metrics["num_objects"] == len(validation)
    for gt_id, ious in harness.items():  # float32 in training: the same IoU, rounded
        assert torch.equal(ious.float(), validation[gt_id]), gt_id
    reported = [metrics[f"miou_{k}pt"] for k in range(1, clicks + 1)]
    assert logged == pytest.approx(reported, abs=1e-6)
    # every click changes the mIoU: a click skipped or misplaced on one side would show
    assert all(abs(a - b) > 1e-5 for a, b in zip(reported, reported[1:]))
    assert {label for r in records for *_, label in r["clicks"][1:]} == {0, 1}


# ------------------------------------------------------------------- dataset and metrics


def write_dataset(root: Path, lvis: bool = False) -> Path:
    """Three images (in ``root/val/``) with small, medium and large boxes as polygons and
    compressed RLEs, an empty mask (skipped) and, for COCO, a crowd region as an
    uncompressed RLE (left out), in COCO's (or LVIS's) layout. ``area`` is the polygon's
    area or the RLE's pixel count, as in COCO's files."""
    shapes = [
        (120, 160, [(10, 20, 10, 30), (30, 90, 40, 150), (95, 118, 2, 9)]),
        (96, 128, [(5, 90, 0, 120), (40, 60, 60, 90)]),
        (100, 140, [(20, 80, 20, 70), (85, 95, 100, 130)]),
    ]
    images, annotations = [], []
    (root / "val").mkdir(parents=True, exist_ok=True)
    for i, (h, w, boxes) in enumerate(shapes, start=1):
        masks = np.stack([box(h, w, *b) for b in boxes])
        Image.fromarray(scene(masks, i)).save(root / "val" / f"{i:03d}.png")
        name = (
            {"coco_url": f"http://images.x.org/val/{i:03d}.png"}
            if lvis
            else {"file_name": f"val/{i:03d}.png"}
        )
        images.append({"id": i, "width": w, "height": h, **name})
        for k, ((y0, y1, x0, x1), rle) in enumerate(zip(boxes, rle_encode(masks))):
            polygon = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            rle = {"size": [h, w], "counts": rle["counts"].decode()}
            annotations.append(
                {
                    "image_id": i,
                    "category_id": 1 + k % 2,
                    "segmentation": polygon if k == 0 else rle,
                    "area": float((y1 - y0) * (x1 - x0)),
                }
            )
    empty = rle_encode(np.zeros((1, 96, 128), dtype=bool))[0]
    empty = {"size": [96, 128], "counts": empty["counts"].decode()}
    annotations.append({"image_id": 2, "category_id": 1, "segmentation": empty, "area": 0.0})
    if not lvis:  # LVIS has no crowd regions
        crowd = {"size": [100, 140], "counts": [0, 14000]}
        annotations.append(
            {"image_id": 3, "category_id": 1, "segmentation": crowd, "area": 14000.0, "iscrowd": 1}
        )
    for k, ann in enumerate(annotations):
        ann["id"] = 100 + k
        if not lvis:
            ann.setdefault("iscrowd", 0)
    document = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    path = root / ("lvis.json" if lvis else "instances.json")
    path.write_text(json.dumps(document))
    return path


NUM_CLICKS = [1, 2, 3, 5]


def recomputed_metrics(annotations: Path, predictions: Path) -> dict[str, float]:
    """The metrics from ``predictions.json`` and the ground truth alone: IoU after click 1
    by pycocotools of the saved mask, later IoUs and the oracle as saved, sizes from the
    ground truth's ``area``."""
    coco = COCO(str(annotations))
    records = json.loads(predictions.read_text())
    expected_ids = {
        a["id"]
        for a in coco.anns.values()
        if not a.get("iscrowd", 0) and mask_utils.area(coco.annToRLE(a)) > 0
    }
    assert sorted(r["gt_id"] for r in records) == sorted(expected_ids)  # each object once
    groups: dict[str, list] = {"": [], "_small": [], "_medium": [], "_large": []}
    for record in records:
        gt = coco.anns[record["gt_id"]]
        assert (record["image_id"], record["category_id"]) == (gt["image_id"], gt["category_id"])
        iou = mask_utils.iou([record["segmentation"]], [coco.annToRLE(gt)], [0])[0, 0]
        assert record["ious"][0] == pytest.approx(iou, abs=1e-12)
        assert record["oracle_iou"] >= record["ious"][0]
        assert len(record["ious"]) == max(NUM_CLICKS) and record["clicks"][0][2] == 1
        size = "_small" if gt["area"] < 32**2 else "_medium" if gt["area"] < 96**2 else "_large"
        row = [iou, *record["ious"][1:], record["oracle_iou"]]
        groups[""].append(row)
        groups[size].append(row)
    metrics = {}
    for suffix, rows in groups.items():
        metrics[f"num_objects{suffix}"] = len(rows)
        table = np.array(rows)
        for n in NUM_CLICKS:
            metrics[f"miou_{n}pt{suffix}"] = table[:, n - 1].mean()
        metrics[f"miou_1pt_oracle{suffix}"] = table[:, -1].mean()
    return metrics


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_metrics_equal_a_recomputation_from_the_saved_predictions(tmp_path, predictor, kind):
    annotations = write_dataset(tmp_path / "data", lvis=kind == "lvis")
    data = {"format": kind, "images": str(tmp_path / "data"), "annotations": str(annotations)}
    settings = {"task": f"points_{kind}", "num_clicks": NUM_CLICKS, "objects_per_batch": 2}
    metrics = points.run_from_config(
        EvalJob(lambda: predictor.model, settings, data, tmp_path / "out", "cpu", progress=False)
    )
    expected = recomputed_metrics(annotations, tmp_path / "out" / "predictions.json")
    assert expected["num_objects"] == 7
    assert {k: expected[k] for k in ("num_objects_small", "num_objects_medium")} == {
        "num_objects_small": 4,
        "num_objects_medium": 2,
    }
    assert metrics == pytest.approx(
        {**expected, "num_images": 3, "num_skipped_empty": 1}, abs=1e-12
    )


def test_batch_size_does_not_change_the_clicks(tmp_path, predictor):
    """Objects decoded one at a time or all together: the same clicks and IoUs (within a
    pixel: the rounding of a batched decoder call can flip a pixel whose logit is ~0)."""
    annotations = write_dataset(tmp_path)
    data = {"images": str(tmp_path), "annotations": str(annotations)}
    runs = []
    for batch in (1, 64):
        settings = {"num_clicks": [3], "objects_per_batch": batch}
        points.run_from_config(
            EvalJob(
                lambda: predictor.model,
                settings,
                data,
                tmp_path / str(batch),
                "cpu",
                progress=False,
            )
        )
        runs.append(json.loads((tmp_path / str(batch) / "predictions.json").read_text()))
    one, together = runs
    assert [r["clicks"] for r in one] == [r["clicks"] for r in together]
    for a, b in zip(one, together):
        assert a["ious"] == pytest.approx(b["ious"], abs=1e-3)


def test_size_breakdown_uses_coco_area_ranges():
    assert [points.size_of(a) for a in (0, 1023.9, 1024, 9215.5, 9216, 1e7)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    records = [
        {"gt_area": 100.0, "ious": [0.2, 0.4], "oracle_iou": 0.5},
        {"gt_area": 500.0, "ious": [0.4, 0.6], "oracle_iou": 0.4},
        {"gt_area": 5000.0, "ious": [0.9, 1.0], "oracle_iou": 0.9},
    ]
    metrics = points.points_metrics(records, num_clicks=[2])
    assert metrics == pytest.approx(
        {
            "num_objects": 3,
            "miou_1pt": 0.5,
            "miou_2pt": 2.0 / 3.0,
            "miou_1pt_oracle": 0.6,
            "num_objects_small": 2,
            "miou_1pt_small": 0.3,
            "miou_2pt_small": 0.5,
            "miou_1pt_oracle_small": 0.45,
            "num_objects_medium": 1,
            "miou_1pt_medium": 0.9,
            "miou_2pt_medium": 1.0,
            "miou_1pt_oracle_medium": 0.9,
            "num_objects_large": 0,  # no large object: no large mIoU
        }
    )
    with pytest.raises(ValueError, match="hold 2 clicks, not 5"):
        points.points_metrics(records, num_clicks=[5])


def test_bad_settings_are_reported(tmp_path, predictor):
    annotations = write_dataset(tmp_path)
    data = {"images": str(tmp_path), "annotations": str(annotations)}
    with pytest.raises(ValueError, match="num_clicks must be"):
        points.run_from_config(
            EvalJob(lambda: predictor.model, {"num_clicks": [0]}, data, tmp_path, "cpu")
        )
    with pytest.raises(ValueError, match="data.format must be one of"):
        points.run_from_config(
            EvalJob(lambda: predictor.model, {}, {**data, "format": "voc"}, tmp_path, "cpu")
        )
