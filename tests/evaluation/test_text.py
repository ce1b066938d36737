"""The text-to-mask harnesses (App. D.5): queries (one per image and category for COCO/LVIS,
one per sentence for RefCOCO), the most confident of 3 masks, and gIoU / cIoU from the saved
predictions against a direct computation with pycocotools and NumPy; first with a stand-in
predictor that segments the colour a text names, then end to end with the real SamPredictor,
a tiny CLIP and ``sam_lightning.evaluate``."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import text_fixtures as tf
import torch
from PIL import Image
from pycocotools import mask as mask_api
from pycocotools.coco import COCO

from sam_lightning.evaluation import text
from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.evaluation.text_harness import evaluate_text
from sam_lightning.evaluation.text_metrics import category_giou, text_metrics
from sam_lightning.evaluation.text_queries import open_coco_queries
from sam_lightning.file_io import CocoFormatError
from sam_lightning.settings.evaluate import TextCocoSettings, TextRefcocoSettings
from sam_lightning.settings.schema import defaults

# pycocotools 2.0.x's decode passes copy=False to NumPy 2's __array__: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
sys.path.insert(0, str(Path(__file__).parents[1] / "modeling"))
from clip_test_models import save_tiny_clip  # noqa: E402

CLIP = {"clip": {"path": "unused by the stand-in"}}


@pytest.fixture
def fake(monkeypatch) -> tf.ColourPredictor:
    """The stand-in predictor, used by ``run_from_config`` in place of the real one."""
    predictor = tf.ColourPredictor()
    monkeypatch.setattr(text, "text_predictor", lambda get_model, path, device: predictor)
    return predictor


def run(settings: dict, data: dict, out: Path) -> tuple[dict, list[dict]]:
    """``run_from_config`` with the stand-in; returns the metrics and the saved records."""
    metrics = text.run_from_config(
        EvalJob(lambda: None, {**CLIP, **settings}, data, out, "cpu", progress=False)
    )
    return metrics, json.loads((out / "predictions.json").read_text())


def coco_data(root: Path, lvis: bool = False) -> dict:
    annotations = tf.write_coco_text(root, lvis=lvis)
    return {
        "format": "lvis" if lvis else "coco",
        "images": str(root),
        "annotations": str(annotations),
    }


# ------------------------------------------------------------- the direct computation


def coco_truth(
    path: str, include_crowd: bool = True, skip_not_exhaustive: bool = True
) -> dict[tuple[int, int], np.ndarray]:
    """``(image_id, category_id) -> union of the category's masks`` by pycocotools."""
    coco = COCO(path)
    truth = {}
    for image_id, anns in coco.imgToAnns.items():
        info = coco.imgs[image_id]
        kept = [a for a in anns if include_crowd or not a.get("iscrowd", 0)]
        for category in {a["category_id"] for a in kept}:
            if skip_not_exhaustive and category in info.get("not_exhaustive_category_ids", []):
                continue
            masks = [coco.annToMask(a).astype(bool) for a in kept if a["category_id"] == category]
            truth[(image_id, category)] = np.logical_or.reduce(masks)
    return truth


def refcoco_truth(root: Path, split: str) -> dict[tuple[int, int], tuple[str, np.ndarray]]:
    """``(ref_id, sentence index) -> (sentence, the ann's mask)`` by pycocotools."""
    coco = COCO(str(root / "refcoco" / "instances.json"))
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())  # our own fixture
    return {
        (ref["ref_id"], j): (s["sent"], coco.annToMask(coco.anns[ref["ann_id"]]).astype(bool))
        for ref in refs
        if ref["split"] == split
        for j, s in enumerate(ref["sentences"])
    }


def direct_metrics(records: list[dict], truth: dict, key) -> dict[str, float]:
    """gIoU, cIoU, per size and the category mean from the decoded saved masks and the
    ground truth, checking every record's counts on the way."""
    rows = []
    for record in records:
        gt = truth[key(record)]
        gt = gt[1] if isinstance(gt, tuple) else gt
        pred = mask_api.decode(record["segmentation"]).astype(bool)
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
        assert (record["intersection"], record["union"]) == (inter, union)
        assert record["gt_area"] == gt.sum() and record["iou"] == pytest.approx(inter / union)
        rows.append((inter, union, int(gt.sum()), record["category_id"]))
    metrics: dict[str, float] = {}
    sizes = {"": (0, np.inf), "_small": (0, 32**2), "_medium": (32**2, 96**2)}
    sizes["_large"] = (96**2, np.inf)
    for suffix, (low, high) in sizes.items():
        group = [r for r in rows if low <= r[2] < high]
        metrics[f"num_queries{suffix}"] = len(group)
        if group:
            metrics[f"giou{suffix}"] = np.mean([i / u for i, u, _, _ in group])
            metrics[f"ciou{suffix}"] = sum(r[0] for r in group) / sum(r[1] for r in group)
    categories = {r[3] for r in rows}
    means = [np.mean([i / u for i, u, _, c in rows if c == k]) for k in categories]
    return metrics, {"num_categories": len(categories), "giou_category_mean": np.mean(means)}


def image_of(root: Path, image_id: int) -> np.ndarray:
    return np.asarray(Image.open(root / "val" / f"{image_id // 10:03d}.png").convert("RGB"))


# ------------------------------------------------------------------------- text_coco


def test_coco_queries_metrics_equal_the_direct_computation(tmp_path, fake):
    data = coco_data(tmp_path / "data")
    settings = {"task": "text_coco", "prompt_template": "a photo of a {}"}
    metrics, records = run(settings, data, tmp_path / "out")
    truth = coco_truth(data["annotations"])
    present = {k for k, m in truth.items() if m.any()}
    assert sorted((r["image_id"], r["category_id"]) for r in records) == sorted(present)
    assert len(records) == 6 and len(truth) - len(present) == 1  # the empty teddy bear
    expected, per_category = direct_metrics(
        records, truth, lambda r: (r["image_id"], r["category_id"])
    )
    assert metrics == pytest.approx(
        {
            **expected,
            **per_category,
            "num_images": 4,
            "num_skipped_empty": 1,
            "num_skipped_not_exhaustive": 0,
        },
        abs=1e-12,
    )
    assert text_metrics(records, per_category=True) == pytest.approx(
        {**expected, **per_category}, abs=1e-12
    )
    chosen = set()
    for record in records:  # COCO names as they are, in the template
        assert record["text"] == f"a photo of a {tf.NAMES[record['category_id']]}"
        # the most confident of the stand-in's 3 masks, with its score
        fake.set_image(image_of(tmp_path / "data", record["image_id"]))
        masks, scores = fake.masks_of(record["text"])
        best = int(np.argmax(scores))
        chosen.add(best)
        assert record["score"] == pytest.approx(scores[best])
        np.testing.assert_array_equal(mask_api.decode(record["segmentation"]), masks[best])
    assert len(chosen) > 1  # not always the first mask
    crowd = [r for r in records if r["image_id"] == 40]
    assert len(crowd) == 1 and crowd[0]["gt_area"] == 50 * 60  # a crowd region is its category


def test_crowd_regions_can_be_left_out(tmp_path, fake):
    data = coco_data(tmp_path / "data")
    metrics, records = run({"task": "text_coco", "include_crowd": False}, data, tmp_path / "out")
    truth = coco_truth(data["annotations"], include_crowd=False)
    expected, _ = direct_metrics(records, truth, lambda r: (r["image_id"], r["category_id"]))
    assert metrics["num_images"] == 3  # image 40 holds only a crowd
    assert len(records) == 4 and all(r["image_id"] != 40 for r in records)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("skip_not_exhaustive", [True, False])
def test_lvis_names_and_not_exhaustive_categories(tmp_path, fake, skip_not_exhaustive):
    data = coco_data(tmp_path / "data", lvis=True)
    settings = {"task": "text_coco", "skip_not_exhaustive": skip_not_exhaustive}
    metrics, records = run(settings, data, tmp_path / "out")
    truth = coco_truth(data["annotations"], skip_not_exhaustive=skip_not_exhaustive)
    expected, per_category = direct_metrics(
        records, truth, lambda r: (r["image_id"], r["category_id"])
    )
    assert {r["text"] for r in records} == {"traffic light", "dog", "teddy bear"}
    assert metrics["num_skipped_not_exhaustive"] == int(skip_not_exhaustive)
    assert len(records) == 6 - skip_not_exhaustive
    assert metrics == pytest.approx(
        {
            **expected,
            **per_category,
            "num_images": 4,
            "num_skipped_empty": 1,
            "num_skipped_not_exhaustive": int(skip_not_exhaustive),
        },
        abs=1e-12,
    )


def test_batches_and_max_images(tmp_path, fake):
    data = coco_data(tmp_path / "data")
    _, together = run({"task": "text_coco"}, data, tmp_path / "64")
    assert [len(c) for c in fake.calls] == [2, 1, 2, 1]  # one call per image (empty left out)
    fake.calls.clear()
    _, alone = run({"task": "text_coco", "queries_per_batch": 1}, data, tmp_path / "1")
    assert alone == together and {len(c) for c in fake.calls} == {1}
    metrics, first = run({"task": "text_coco", "max_images": 2}, data, tmp_path / "2")
    assert metrics["num_images"] == 2 and first == together[:3]


def test_metrics_of_hand_made_records():
    records = [
        {"iou": 0.5, "intersection": 50, "union": 100, "gt_area": 60, "category_id": 1},
        {"iou": 0.25, "intersection": 10, "union": 40, "gt_area": 30, "category_id": 1},
        {"iou": 0.9, "intersection": 9000, "union": 10000, "gt_area": 9500, "category_id": 2},
    ]
    assert category_giou(records) == {1: 0.375, 2: 0.9}
    assert text_metrics(records, per_category=True) == pytest.approx(
        {
            "num_queries": 3,
            "giou": 1.65 / 3,
            "ciou": 9060 / 10140,
            "num_queries_small": 2,
            "giou_small": 0.375,
            "ciou_small": 60 / 140,
            "num_queries_medium": 0,  # no medium query: no medium gIoU
            "num_queries_large": 1,
            "giou_large": 0.9,
            "ciou_large": 0.9,
            "num_categories": 2,
            "giou_category_mean": (0.375 + 0.9) / 2,
        }
    )
    assert text_metrics([]) == {f"num_queries{s}": 0 for s in ("", "_small", "_medium", "_large")}


# ----------------------------------------------------------------------- text_refcoco


def test_refcoco_metrics_equal_the_direct_computation(tmp_path, fake):
    root = tf.write_refcoco(tmp_path / "refer")
    settings = {"task": "text_refcoco", "queries_per_batch": 3}
    metrics, records = run(settings, {"root": str(root), "split": "val"}, tmp_path / "out")
    truth = refcoco_truth(root, "val")
    present = {k for k, (_, m) in truth.items() if m.any()}
    assert sorted((r["ref_id"], r["sentence"]) for r in records) == sorted(present)
    assert len(records) == 4 and len(truth) - len(present) == 2  # ref 5's two sentences
    for record in records:
        sentence, _ = truth[(record["ref_id"], record["sentence"])]
        assert record["text"] == sentence and record["ann_id"] == 1000 + record["ref_id"]
        assert record["category_id"] == 1 + record["ref_id"] % 3
        assert isinstance(record["sent_id"], int)
    expected, _ = direct_metrics(records, truth, lambda r: (r["ref_id"], r["sentence"]))
    assert metrics == pytest.approx(
        {**expected, "num_images": 2, "num_skipped_empty": 2}, abs=1e-12
    )
    assert text_metrics(records) == pytest.approx(expected, abs=1e-12)
    assert metrics["giou"] > 0.5  # the stand-in finds the colour each sentence names


def test_refcoco_from_explicit_files(tmp_path, fake):
    root = tf.write_refcoco(tmp_path / "refer", dataset="refcocog", split_by="umd")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(pickle.loads((root / "refcocog" / "refs(umd).p").read_bytes())))
    data = {
        "refs": str(refs),
        "instances": str(root / "refcocog" / "instances.json"),
        "images": str(root / "images" / "mscoco" / "images" / "train2014"),
        "split": "testA",
    }
    metrics, records = run({"task": "text_refcoco"}, data, tmp_path / "out")
    assert metrics["num_queries"] == 3 and {r["ref_id"] for r in records} == {2}
    data = {"root": str(root), "dataset": "refcocog", "split": "val"}  # refs(umd).p by default
    metrics, _ = run({"task": "text_refcoco"}, data, tmp_path / "val")
    assert metrics["num_queries"] == 4


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "settings, data, problem",
    [
        (
            {"task": "text_coco", "num_clicks": [1]},
            {},
            r"text_coco: eval.num_clicks: unknown setting",
        ),
        ({"task": "text_coco", "prompt_template": "a photo"}, {}, "exactly one {}"),
        ({"task": "text_coco", "prompt_template": "{} {}"}, {}, "exactly one {}"),
        ({"task": "text_coco", "clip": {"path": None}}, {}, "eval.clip must be"),
        (
                {"task": "text_refcoco", "clip": {"path": "x", "dim": 8}},
                {},
                r"eval.clip.dim: unknown setting \(known: path\)",
            ),
        ({"task": "text_coco"}, {"format": "voc"}, "data.format must be one of"),
        ({"task": "text_coco", "queries_per_batch": 0}, {}, "queries_per_batch must be at least 1"),
        ({"task": "text_voc"}, {}, "unknown task 'text_voc'"),
        ({"task": "text_refcoco"}, {"root": None}, r"give data.root .* or data.refs"),
    ],
)
def test_bad_settings_are_reported(tmp_path, fake, settings, data, problem):
    data = {**coco_data(tmp_path / "data"), **data}
    with pytest.raises(ValueError, match=problem):
        run(settings, data, tmp_path / "out")


def test_bad_categories_name_the_file_and_field(tmp_path, fake):
    data = coco_data(tmp_path / "data")
    path = Path(data["annotations"])
    document = json.loads(path.read_text())
    for categories, field in [(None, "categories"), ([{"id": 1}], "categories[0].name")]:
        path.write_text(json.dumps({**document, "categories": categories}))
        with pytest.raises(
            CocoFormatError, match="text queries need the names|expected a name"
        ) as error:
            run({"task": "text_coco"}, data, tmp_path / "out")
        assert (error.value.file, error.value.field) == (str(path), field)
    path.write_text(json.dumps({**document, "categories": document["categories"][1:]}))
    with pytest.raises(CocoFormatError, match="1 is not in the file's categories") as error:
        run({"task": "text_coco"}, data, tmp_path / "out")
    assert error.value.field == "annotation id 100.category_id"


# ------------------------------------------------------------------ the real objects


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_the_model_must_take_the_clip_embeddings(tiny_clip):
    from sam_lightning.modeling.build import build_sam
    from sam_lightning.modeling.text_encoder import ClipEncoderFilesError

    width = 16  # tiny_clip_config's projection_dim
    with pytest.raises(ValueError, match=f"no text prompt.*set model.text_embed_dim={width}"):
        text.text_predictor(lambda: build_sam("vit_tiny", image_size=64), str(tiny_clip), "cpu")
    model = build_sam("vit_tiny", image_size=64, text_embed_dim=8)
    with pytest.raises(ValueError, match="a text projection of width 8"):
        text.text_predictor(lambda: model, str(tiny_clip), "cpu")
    with pytest.raises(ClipEncoderFilesError, match="config.json"):
        text.text_predictor(lambda: model, str(tiny_clip.parent), "cpu")


@pytest.fixture(scope="module")
def text_model():
    from sam_lightning.modeling.build import build_sam

    torch.manual_seed(0)
    return build_sam("vit_tiny", image_size=64, text_embed_dim=16)


def test_real_predictor_records_equal_single_text_predictions(tmp_path, tiny_clip, text_model):
    """Batched texts through the real SamPredictor and tiny CLIP give the masks and scores of
    ``predict(text=...)`` one text at a time (within a few pixels: batched decoding can flip a
    pixel whose logit is ~0)."""
    data = coco_data(tmp_path / "data")
    predictor = text.text_predictor(lambda: text_model, str(tiny_clip), "cpu")
    queries = open_coco_queries(defaults(TextCocoSettings), data)
    metrics, records = evaluate_text(predictor, queries, queries_per_batch=4, progress=False)
    assert metrics["num_queries"] == len(records) == 6
    for record in records:
        predictor.set_image(image_of(tmp_path / "data", record["image_id"]))
        masks, scores, _ = predictor.predict(text=record["text"], multimask_output=True)
        best = int(np.argmax(scores))
        assert record["score"] == pytest.approx(float(scores[best]), abs=1e-4)
        differ = mask_api.decode(record["segmentation"]).astype(bool) != masks[best]
        assert differ.mean() < 1e-2


TINY = ["model.type=vit_tiny", "model.image_size=64", "model.text_embed_dim=16"]


def compose_config(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sam_lightning.entry_points import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def test_the_configs_set_the_text_projection():
    config = compose_config("+eval=text_coco", "model=vit_tiny")
    assert config["model"]["type"] == "vit_tiny" and config["model"]["text_embed_dim"] == 768
    assert config["eval"]["clip"] == {"path": "???"}
    assert config["eval"] == {
        "task": "text_coco",
        **defaults(TextCocoSettings),
        "clip": {"path": "???"},
    }
    config = compose_config("model=vit_b", "+eval=text_refcoco", "model.text_embed_dim=16")
    assert config["model"]["type"] == "vit_b" and config["model"]["text_embed_dim"] == 16
    assert set(config["eval"]) == {"task", *defaults(TextRefcocoSettings)}
    assert config["data"]["split"] == "val" and config["data"]["dataset"] == "refcoco"


@pytest.mark.parametrize("task", ["text_coco", "text_refcoco"])
def test_the_evaluate_command_end_to_end(tmp_path, tiny_clip, task):
    """``evaluate`` on the tiny model and CLIP: metrics.json is text_metrics of the saved
    predictions.json and the direct computation."""
    from sam_lightning.evaluate import evaluate

    if task == "text_coco":
        data = coco_data(tmp_path / "data")
        overrides = [f"data.{k}={v}" for k, v in data.items()]
        truth = coco_truth(data["annotations"])
        key = lambda r: (r["image_id"], r["category_id"])  # noqa: E731
    else:
        root = tf.write_refcoco(tmp_path / "refer")
        overrides = [f"data.root={root}", "data.split=val"]
        truth = refcoco_truth(root, "val")
        key = lambda r: (r["ref_id"], r["sentence"])  # noqa: E731
    config = compose_config(
        f"+eval={task}",
        *TINY,
        f"eval.clip.path={tiny_clip}",
        *overrides,
        "device=cpu",
        "progress=false",
        "logger.kind=none",
    )
    out = tmp_path / "out"
    evaluate(config, out)
    metrics = json.loads((out / "metrics.json").read_text())
    records = json.loads((out / "predictions.json").read_text())
    expected, per_category = direct_metrics(records, truth, key)
    if task == "text_coco":
        expected.update(per_category)
    counts = {k: v for k, v in metrics.items() if k.startswith(("num_images", "num_skipped"))}
    assert metrics == pytest.approx({**text_metrics(records, task == "text_coco"), **counts})
    assert metrics == pytest.approx({**expected, **counts}, abs=1e-12)
    assert counts["num_images"] == (4 if task == "text_coco" else 2)


def test_the_command_asks_for_the_clip_directory(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "sam_lightning.evaluate", "+eval=text_refcoco", "data.root=x"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "set eval.clip.path=..." in result.stdout + result.stderr
