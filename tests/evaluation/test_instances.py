"""Instance segmentation from detector boxes (App. D.4) on a small model with a stand-in
decoder that reads its prompts: the protocol's steps against the same steps done one box at
a time with the public predictor API, and AP equal to pycocotools' / lvis' on the saved
predictions.json."""

from __future__ import annotations

import contextlib
import io
import json
import math

import coco_fixtures
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from sam_lightning import SamPredictor, build_sam
from sam_lightning.evaluation import instances, lvis_compat
from sam_lightning.evaluation.settings import EvalJob

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
]
PE_FREQUENCY = 0.4  # low enough that the corners' positional-encoding phases never wrap
NO_MASK = 1e6  # the dense embedding without a mask input
SCALES = (0.7, 1.0, 1.3)  # the three masks of a box: shrunk, as is, grown
SLOPE = 60.0


class BoxDecoder(nn.Module):
    """A mask decoder that reads box prompts back from their corner tokens.

    Without a mask input it returns three rectangles around the box (:data:`SCALES`), with
    scores that vary with the box, so that the most confident one differs between boxes.
    With a mask input (carried as its 4x4 block means by :class:`ReadableMask`) it returns
    one mask: that input cut to the box grown by 15%, so refined masks are blocky and
    differ from every first-pass mask.
    """

    def __init__(self, corners: torch.Tensor, low_res: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("corners", corners)  # 2 x C: the two corner embeddings
        self.low_res = low_res
        self.half = corners.shape[1] // 2

    def boxes(self, sparse: torch.Tensor) -> torch.Tensor:
        """``P x 4`` box corners in [0, 1] of the padded input."""
        features = sparse[:, :2] - self.corners
        angles = torch.atan2(features[..., :2], features[..., self.half : self.half + 2])
        return ((angles / (2 * math.pi * PE_FREQUENCY) + 1) / 2).reshape(-1, 4)

    def rectangles(self, boxes: torch.Tensor, scale: float) -> torch.Tensor:
        h, w = self.low_res
        ys = ((torch.arange(h) + 0.5) / h)[None, :, None]
        xs = ((torch.arange(w) + 0.5) / w)[None, None, :]
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        hw, hh = scale * (boxes[:, 2] - boxes[:, 0]) / 2, scale * (boxes[:, 3] - boxes[:, 1]) / 2
        inside_x = hw[:, None, None] - (xs - cx[:, None, None]).abs()
        inside_y = hh[:, None, None] - (ys - cy[:, None, None]).abs()
        return SLOPE * torch.minimum(inside_x, inside_y)

    def forward(
        self,
        image_embeddings,
        image_pe,
        sparse_prompt_embeddings,
        dense_prompt_embeddings,
        multimask_output,
        image_index=None,
    ):
        boxes = self.boxes(sparse_prompt_embeddings.float())
        if (dense_prompt_embeddings[:, 0, 0, 0] < NO_MASK / 2).all():  # refinement
            fed = F.interpolate(dense_prompt_embeddings[:, :1], size=self.low_res, mode="nearest")
            masks = torch.minimum(fed, self.rectangles(boxes, 1.15)[:, None])
            return masks.expand(-1, 3 if multimask_output else 1, -1, -1), torch.ones(len(boxes), 1)
        masks = torch.stack([self.rectangles(boxes, s) for s in SCALES], 1)
        k = torch.arange(3)[None]
        scores = 0.5 + 0.4 * torch.sin(13 * boxes[:, :1] + 7 * boxes[:, 1:2] + 2 * k)
        return (masks, scores) if multimask_output else (masks[:, 1:2], scores[:, 1:2])


class ReadableMask(nn.Module):
    """Mask downscaling that keeps the mask readable: its 4x4 block means, in every channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(masks, 4).expand(-1, self.channels, -1, -1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    sam = build_sam("vit_tiny", image_size=256)
    prompts = sam.prompt_encoder
    with torch.no_grad():
        prompts.pe_layer.positional_encoding_gaussian_matrix[:, :2] = torch.tensor(
            [[PE_FREQUENCY, 0.0], [0.0, PE_FREQUENCY]]
        )
        prompts.no_mask_embed.weight.fill_(NO_MASK)
    corners = torch.cat([prompts.point_embeddings[2].weight, prompts.point_embeddings[3].weight])
    prompts.mask_downscaling = ReadableMask(prompts.embed_dim)
    sam.mask_decoder = BoxDecoder(corners.detach().clone(), prompts.mask_input_size)
    return sam.eval()


def detections_for(document, seed):
    """Detector-like boxes: the ground-truth boxes jittered, some relabelled, plus spurious
    ones (also on the image without objects), with scores."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in document["categories"]]
    detections = []
    for ann in document["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 2, 4)
        label = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(category_ids))
        detections.append(
            {
                "image_id": ann["image_id"],
                "category_id": label,
                "bbox": [
                    x + jitter[0],
                    y + jitter[1],
                    max(w + jitter[2], 2.0),
                    max(h + jitter[3], 2.0),
                ],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    for info in document["images"]:
        for _ in range(3):
            x, y = rng.uniform(0, info["width"] - 20), rng.uniform(0, info["height"] - 20)
            detections.append(
                {
                    "image_id": info["id"],
                    "category_id": int(rng.choice(category_ids)),
                    "bbox": [x, y, 18.0, 15.0],
                    "score": float(rng.uniform(0, 0.5)),
                }
            )
    detections.append(
        {
            "image_id": 999999,
            "category_id": category_ids[0],
            "bbox": [1.0, 1.0, 5.0, 5.0],
            "score": 0.9,
        }
    )  # not an evaluated image
    return detections


def test_protocol_equals_the_predictor_one_box_at_a_time(model):
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    corner = rng.uniform([0, 0], [150, 100], (30, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(15, 60, (30, 2))], 1)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    rles = instances.segment_boxes(predictor, boxes, boxes_per_batch=7)
    ours = rles.decode().bool().numpy()

    expected, first_pass, chosen = [], [], []
    for box in boxes:  # App. D.4, one box at a time with the official predictor API
        masks, scores, low_res = predictor.predict(box=box, multimask_output=True)
        best = int(np.argmax(scores))
        refined, _, _ = predictor.predict(
            box=box, mask_input=low_res[[best]], multimask_output=False
        )
        expected.append(refined[0])
        first_pass.append(masks)
        chosen.append(best)
    np.testing.assert_array_equal(ours, np.array(expected))
    # The steps matter: skipping the refinement or feeding another mask changes the result.
    first_pass = np.array(first_pass)
    assert len(set(chosen)) == 3
    for k in range(3):
        differs = (ours != first_pass[:, k]).any((1, 2))
        assert differs.mean() > 0.8
    unrefined = instances.segment_boxes(predictor, boxes, refine=False).decode().bool().numpy()
    np.testing.assert_array_equal(unrefined, first_pass[np.arange(len(boxes)), chosen])


@pytest.fixture(scope="module", params=["coco", "lvis"])
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    document = coco_fixtures.make_ground_truth(8, lvis=request.param == "lvis")
    coco_fixtures.write_images(root / "images", document)
    coco_fixtures.write_document(root / "gt.json", document)
    detections = detections_for(document, 2)
    (root / "detections.json").write_text(json.dumps(detections))
    data = {
        "images": str(root / "images"),
        "annotations": str(root / "gt.json"),
        "detections": str(root / "detections.json"),
    }
    return request.param, document, detections, data


def test_ap_equals_the_reference_on_the_saved_predictions(model, dataset, tmp_path):
    fmt, document, detections, data = dataset
    metrics = instances.run_from_config(
        EvalJob(lambda: model, {"task": f"instances_{fmt}"}, data, tmp_path, "cpu", progress=False)
    )
    path = tmp_path / "predictions.json"
    predictions = json.loads(path.read_text())
    evaluated = [d for d in detections if d["image_id"] != 999999]
    assert len(predictions) == len(evaluated)
    # Every mask keeps its box's score and category (the masks come in the detections' order).
    by_image = {}
    for d in evaluated:
        by_image.setdefault(d["image_id"], []).append(d)
    ordered = [d for info in document["images"] for d in by_image.get(info["id"], [])]
    assert [(p["image_id"], p["category_id"], p["score"]) for p in predictions] == [
        (d["image_id"], d["category_id"], d["score"]) for d in ordered
    ]
    if fmt == "coco":
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(data["annotations"])
            evaluator = COCOeval(gt, gt.loadRes(str(path)), "segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        keys = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]
        assert [metrics[k] for k in keys] == evaluator.stats[:6].tolist()
    else:
        import lvis

        gt = lvis.LVIS(data["annotations"])
        evaluator = lvis.LVISEval(gt, lvis.LVISResults(gt, str(path)), "segm")
        with lvis_compat.numpy_compat():
            evaluator.run()
        results = evaluator.get_results()
        assert metrics == {name: results[key] for name, key in lvis_compat.METRICS.items()}
    assert 0 < metrics["ap"] < 1


def test_max_images_and_empty_images(model, dataset, tmp_path):
    fmt, document, _, data = dataset
    metrics = instances.run_from_config(
        EvalJob(
            lambda: model, {"max_images": 3, "boxes_per_batch": 2}, data, tmp_path, "cpu", False
        )
    )
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    first = [image["id"] for image in document["images"][:3]]
    assert {p["image_id"] for p in predictions} == set(first)
    if fmt == "coco":
        from sam_lightning.evaluation import coco_metrics

        assert metrics == coco_metrics.mask_ap(document, predictions, image_ids=first)


def test_bad_inputs_fail_before_the_model_is_built(dataset, tmp_path):
    _, _, _, data = dataset

    def get_model():
        raise AssertionError("the model was built before the data were checked")

    with pytest.raises(FileNotFoundError, match="image files not found"):
        instances.run_from_config(
            EvalJob(get_model, {}, {**data, "images": str(tmp_path)}, tmp_path, "cpu")
        )
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 10, "bbox": [1, 2, 3, 4]}]))
    with pytest.raises(ValueError, match="category_id"):
        instances.run_from_config(
            EvalJob(
                get_model, {}, {**data, "detections": str(tmp_path / "bad.json")}, tmp_path, "cpu"
            )
        )
    with pytest.raises(ValueError, match="unknown setting"):
        instances.run_from_config(EvalJob(get_model, {"refinement": False}, data, tmp_path, "cpu"))
