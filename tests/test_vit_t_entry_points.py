"""Every entry point with model type ``vit_t`` (MobileSAM) and a random-weight checkpoint in
the layout of MobileSAM's ``mobile_sam.pt``: segment, amg, evaluate (points; the text tasks
refused for lack of a text projection), annotate, export, the ONNX decoder export, and
(slow) training followed by export and the other evaluation tasks.

TinyViT runs at 1024 px only, about 6 s per image on 2 CPU cores, so every test embeds one
small image once; the module shares the checkpoint and one predictor."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import requests
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from sam_lightning import amg, export, ops, segment
from sam_lightning.annotate.cli import build_tool
from sam_lightning.annotate.server import ServerThread
from sam_lightning.data import SA1BDataset, decode_masks
from sam_lightning.entry_points import check_command_line, config_dir
from sam_lightning.evaluate import evaluate
from sam_lightning.file_io import read_image
from sam_lightning.inference import SamPredictor
from sam_lightning.inference.onnx_model import INPUT_NAMES, OUTPUT_NAMES
from sam_lightning.modeling.build import build_sam
from sam_lightning.settings import amg as amg_settings
from sam_lightning.settings import annotate as annotate_settings
from sam_lightning.settings import evaluate as evaluate_settings
from sam_lightning.settings import train as train_settings
from sam_lightning.training.module import SamTrainingModule

TESTS = Path(__file__).resolve().parent
for folder in (TESTS / "evaluation", TESTS / "modeling", TESTS.parent / "tools"):
    sys.path.insert(0, str(folder))

import coco_fixtures  # noqa: E402
import export_onnx as export_onnx_command  # noqa: E402
import text_fixtures  # noqa: E402
from clip_test_models import save_tiny_clip  # noqa: E402
from make_demo_image import draw_scene  # noqa: E402
from mobile_sam_reference import import_mobile_sam, randomize_  # noqa: E402

#: The scene every test embeds (H, W), and a click on it in pixels (x, y).
SCENE = (96, 128)
CLICK = (40.0, 30.0)
#: onnxruntime vs PyTorch on logits and scores (as tests/inference/test_onnx_export.py).
ATOL = 1e-4
NO_TEXT_PROJECTION = "the checkpoint has no text projection"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def mobile_sam(tmp_path_factory) -> Path:
    """``mobile_sam.pt``: MobileSAM's own vit_t with every weight and buffer random, saved
    as its state dict (the released file's layout)."""
    reference = randomize_(import_mobile_sam().sam_model_registry["vit_t"](), seed=0)
    path = tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt"
    torch.save(reference.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """photos/scene.png: the demo scene at :data:`SCENE`."""
    folder = tmp_path_factory.mktemp("photos")
    draw_scene(*SCENE).save(folder / "scene.png")
    return folder


@pytest.fixture(scope="module")
def predictor(mobile_sam, photos) -> SamPredictor:
    """Our vit_t from ``mobile_sam.pt`` with the scene set: what the entry points must give."""
    model = build_sam("vit_t", checkpoint=mobile_sam)
    predictor = SamPredictor(model)
    predictor.set_image(read_image(photos / "scene.png"))
    return predictor


def click_masks(predictor: SamPredictor) -> tuple[np.ndarray, np.ndarray]:
    """The 3 masks and scores of :data:`CLICK`."""
    masks, scores, _ = predictor.predict(np.array([CLICK]), np.array([1]), multimask_output=True)
    return masks, scores


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> list[str]:
    """A COCO instances file of 2 noise images (tests/evaluation/coco_fixtures.py) as the
    ``data.*`` overrides of the COCO tasks."""
    root = tmp_path_factory.mktemp("coco")
    document = coco_fixtures.make_ground_truth(0, num_images=2)
    coco_fixtures.write_images(root / "images", document)
    path = coco_fixtures.write_document(root / "instances.json", document)
    return [f"data.images={root / 'images'}", f"data.annotations={path}"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def vit_t(checkpoint: Path) -> list[str]:
    return ["model.type=vit_t", f"model.checkpoint={checkpoint}", "device=cpu", "progress=false"]


# ------------------------------------------------------------------- the settings checks


#: Each Hydra entry point: its settings module, declaration and required overrides.
ENTRY_POINTS = {
    "amg": (amg_settings, "AmgSettings", ["input=x", "output=y"]),
    "annotate": (annotate_settings, "AnnotateSettings", ["images=x", "output=y"]),
    "evaluate": (
        evaluate_settings,
        "EvaluateSettings",
        ["+eval=points_coco", "data.images=x", "data.annotations=y"],
    ),
    "train": (train_settings, "TrainSettings", []),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_hydra_entry_point_accepts_the_model_type(name):
    settings, declaration, overrides = ENTRY_POINTS[name]
    check = (getattr(settings, declaration), settings.check)
    problems, _ = check_command_line(name, [*overrides, "model.type=vit_t"], *check)
    assert problems == []
    problems, _ = check_command_line(name, [*overrides, "model.type=vit_q"], *check)
    assert len(problems) == 1 and problems[0].startswith("model.type=vit_q: not one of")


# --------------------------------------------------------------------------- segment


def test_segment_writes_the_predictors_masks(mobile_sam, photos, predictor, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(photos / "scene.png"), "--point", ",".join(map(str, CLICK)),
            "--model-type", "vit_t", "--checkpoint", str(mobile_sam), "--device", "cpu",
            "--output", str(out)]  # fmt: skip
    assert segment.main(argv) == 0
    assert "masks.json" in capsys.readouterr().out
    document = json.loads((out / "masks.json").read_text())
    assert document["model_type"] == "vit_t" and document["image_size"] == list(SCENE)
    files = sorted(out.glob("mask_*.png"))
    assert [f.name for f in files] == ["mask_00.png", "mask_01.png", "mask_02.png"]
    saved = np.stack([np.array(Image.open(f)) for f in files])
    assert saved.shape == (3, *SCENE) and set(np.unique(saved)) <= {0, 255}
    masks, scores = click_masks(predictor)
    np.testing.assert_array_equal(saved == 255, masks)
    np.testing.assert_allclose([r["score"] for r in document["masks"]], scores, rtol=1e-6)


# ------------------------------------------------------------------------------- amg


def test_amg_writes_an_sa1b_file(mobile_sam, photos, tmp_path):
    out = tmp_path / "masks"
    cfg = compose_config(
        "amg",
        f"input={photos}",
        f"output={out}",
        *vit_t(mobile_sam),
        "num_workers=0",
        "amg.points_per_side=2",
        "amg.pred_iou_thresh=0",  # random weights pass no real threshold
        "amg.stability_score_thresh=0",
        "amg.box_nms_thresh=1.0",
    )
    assert amg.run_from_config(cfg) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["written"] == 1 and summary["masks"] == 12 and summary["failed"] == []
    (sample,) = SA1BDataset(out, image_root=photos)
    assert sample["image_info"]["file_name"] == "scene.png"
    annotations = sample["annotations"]
    assert len(annotations) == 12  # 2 x 2 points x 3 masks, nothing filtered
    masks = decode_masks(annotations)
    assert masks.shape == (12, *SCENE) and masks.any()
    assert [a["area"] for a in annotations] == masks.sum((1, 2)).tolist()


# -------------------------------------------------------------------------- evaluate


def test_evaluate_points(mobile_sam, coco, tmp_path):
    config = compose_config(
        "evaluate",
        "+eval=points_coco",
        *vit_t(mobile_sam),
        *coco,
        "eval.num_clicks=[1,2]",
        "eval.max_images=1",
        "logger.kind=none",
    )
    out = tmp_path / "out"
    metrics = evaluate(OmegaConf.to_container(config, resolve=True), out)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    predictions = json.loads((out / "predictions.json").read_text())
    assert metrics["num_images"] == 1 and metrics["num_objects"] == len(predictions) > 0
    assert {"miou_1pt", "miou_2pt", "miou_1pt_oracle"} <= set(metrics)
    assert metrics["miou_1pt"] == pytest.approx(np.mean([p["ious"][0] for p in predictions]))
    assert 0.0 <= metrics["miou_1pt"] <= metrics["miou_1pt_oracle"] <= 1.0


@pytest.mark.parametrize("task", ["text_coco", "text_refcoco"])
def test_evaluate_text_tasks_are_refused(task, mobile_sam, coco, tiny_clip, tmp_path):
    """The text tasks need a text projection, which mobile_sam.pt lacks: refused with a
    message saying so, before any image is segmented."""
    data = coco if task == "text_coco" else [f"data.root={text_fixtures.write_refcoco(tmp_path)}"]
    config = compose_config(
        "evaluate",
        f"+eval={task}",
        *vit_t(mobile_sam),
        *data,
        f"eval.clip.path={tiny_clip}",
        "logger.kind=none",
    )
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="has no text projection"):  # from build_sam
        with pytest.raises(ValueError, match=NO_TEXT_PROJECTION):
            evaluate(OmegaConf.to_container(config, resolve=True), out)
    assert not (out / "metrics.json").exists() and not (out / "predictions.json").exists()


@pytest.mark.slow
def test_the_text_coco_command_exits_with_the_message(mobile_sam, coco, tiny_clip, tmp_path):
    """The same refusal from ``python -m sam_lightning.evaluate`` (a subprocess: ~10 s of
    imports): a nonzero exit status and the message."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sam_lightning.evaluate", "+eval=text_coco",
               *vit_t(mobile_sam), *coco, f"eval.clip.path={tiny_clip}", "logger.kind=none",
               f"hydra.run.dir={out}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert NO_TEXT_PROJECTION in output and "training.text" in output, output[-3000:]
    assert not (out / "metrics.json").exists() and not (out / "predictions.json").exists()


# -------------------------------------------------------------------------- annotate


def test_annotate_answers_a_click(mobile_sam, photos, predictor, tmp_path):
    tool = build_tool(photos, tmp_path / "annotations", "vit_t", mobile_sam, device="cpu")
    server = ServerThread(tool, port=0).start()
    try:
        response = requests.post(
            server.url + "api/images/scene.png/decode",
            json={"points": [[*CLICK, 1]], "multimask": True},
            timeout=300,
        )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    candidates = response.json()["candidates"]
    masks, scores = click_masks(predictor)
    decoded = ops.rle_decode([c["mask"] for c in candidates]).bool().numpy()
    assert decoded.shape == (3, *SCENE)
    np.testing.assert_array_equal(decoded, masks)
    np.testing.assert_allclose([c["score"] for c in candidates], scores, rtol=1e-6)


# ---------------------------------------------------------------------------- export


def test_export_loads_strictly_into_mobile_sam(mobile_sam, tmp_path, capsys):
    """A training checkpoint of a vit_t run (the module's state dict and hyper-parameters,
    as Lightning saves them) exports to mobile_sam.pt's layout."""
    module = SamTrainingModule(model_type="vit_t", checkpoint=str(mobile_sam))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["model_type"] == "vit_t"
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "exported.pth"
    torch.save(checkpoint, ckpt)
    assert export.main([str(ckpt), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    exported = torch.load(out, weights_only=True)
    reference = import_mobile_sam().sam_model_registry["vit_t"]()
    result = reference.load_state_dict(exported, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    original = torch.load(mobile_sam, weights_only=True)
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[key], original[key]) for key in original)


# ------------------------------------------------------------------------------ ONNX


def onnx_inputs(predictor: SamPredictor, box: np.ndarray | None) -> dict[str, np.ndarray]:
    """The ONNX model's inputs for :data:`CLICK` (and ``box``), as the official notebook
    builds them: the click, then the box's corners (labels 2, 3) or a padding point (-1)."""
    coords, labels = np.array([CLICK]), np.array([1.0])
    if box is None:
        coords, labels = np.concatenate([coords, [[0, 0]]]), np.append(labels, -1)
    else:
        coords, labels = np.concatenate([coords, box.reshape(2, 2)]), np.append(labels, [2, 3])
    size = predictor.original_size
    return {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": predictor.transform.apply_coords(coords, size)[None].astype(np.float32),
        "point_labels": labels[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(size, np.float32),
    }


def test_onnx_decoder_export_matches_the_predictor(mobile_sam, predictor, tmp_path, capsys):
    output = tmp_path / "sam_decoder.onnx"
    argv = ["--checkpoint", str(mobile_sam), "--model-type", "vit_t", "--output", str(output)]
    assert export_onnx_command.main(argv) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    proto = onnx.load(str(output))
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for box in (None, np.array([10.0, 20.0, 90.0, 80.0])):
        outputs = dict(zip(OUTPUT_NAMES, session.run(None, onnx_inputs(predictor, box))))
        logits, scores, low_res = predictor.predict(
            np.array([CLICK]), np.array([1]), box, multimask_output=True, return_logits=True
        )
        assert outputs["masks"].shape == (1, 4, *SCENE)  # the single-mask output, then 3
        np.testing.assert_allclose(outputs["masks"][0, 1:], logits, rtol=0, atol=ATOL)
        np.testing.assert_allclose(outputs["iou_predictions"][0, 1:], scores, rtol=0, atol=ATOL)
        np.testing.assert_allclose(outputs["low_res_masks"][0, 1:], low_res, rtol=0, atol=ATOL)
        assert np.abs(logits).max() > 0.1  # non-trivial logits


# -------------------------------------------------------------------- slow: training


@pytest.mark.slow
def test_training_steps_then_export_loads_into_mobile_sam(mobile_sam, tmp_path):
    """Two steps of ``train`` from mobile_sam.pt at 1024 px on tiny synthetic images, then
    ``export`` of last.ckpt: MobileSAM loads it strictly; the classifier head is unchanged."""
    from sam_lightning.train import train

    config = compose_config(
        "train",
        "+exp=demo",
        "model.type=vit_t",
        "model.image_size=1024",
        f"model.checkpoint={mobile_sam}",
        "data.train.num_images=2",
        "data.train.image_size=64",
        "data.val.num_images=1",
        "data.batch_size=1",
        "data.max_masks=2",
        "training.num_point_rounds=1",
        "training.val_clicks=1",
        "optim.warmup_steps=1",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
    )
    run_dir = tmp_path / "run"
    metrics = train(OmegaConf.to_container(config, resolve=True), run_dir)
    assert metrics["step"] == 2 and math.isfinite(metrics["train/loss"])
    assert 0.0 <= metrics["val/miou_1pt"] <= 1.0
    out = tmp_path / "trained.pth"
    assert export.main([str(run_dir / "checkpoints" / "last.ckpt"), str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    reference = import_mobile_sam().sam_model_registry["vit_t"]()
    result = reference.load_state_dict(exported, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    original = torch.load(mobile_sam, weights_only=True)
    changed = {key for key in original if not torch.equal(exported[key], original[key])}
    assert any(key.startswith("image_encoder.layers.") for key in changed)
    assert any(key.startswith("mask_decoder.") for key in changed)
    assert not any(
        key.startswith(("image_encoder.head.", "image_encoder.norm_head.")) for key in changed
    )


# ----------------------------------------------------- slow: the other evaluation tasks


@pytest.fixture(scope="module")
def lvis(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("lvis")
    document = coco_fixtures.make_ground_truth(1, num_images=2, lvis=True)
    coco_fixtures.write_images(root / "images", document)
    path = coco_fixtures.write_document(root / "lvis.json", document)
    return [f"data.images={root / 'images'}", f"data.annotations={path}"]


def detections(annotations: str, out: Path) -> str:
    """Every ground-truth box as a detection (COCO results: XYWH boxes with scores)."""
    document = json.loads(Path(annotations).read_text())
    boxes = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "score": 0.5 + 0.05 * (i % 10)}
        for i, a in enumerate(document["annotations"])
    ]  # fmt: skip
    out.write_text(json.dumps(boxes))
    return f"data.detections={out}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "task", ["points_lvis", "edges_bsds", "proposals_lvis", "instances_coco", "instances_lvis"]
)
def test_the_other_evaluation_tasks(task, mobile_sam, coco, lvis, tmp_path):
    """Each non-text task of conf/eval/ on one image, with small grids."""
    import bsds_fixtures

    data = {"points_lvis": lvis, "proposals_lvis": lvis, "instances_lvis": lvis}.get(task, coco)
    settings = {
        "points_lvis": ["eval.num_clicks=[1,2]"],
        "edges_bsds": ["eval.points_per_side=4", "eval.thresholds=9"],
        "proposals_lvis": ["eval.points_per_side=4", "eval.max_proposals=50"],
    }.get(task, [])
    if task.startswith("instances"):
        data = [*data, detections(data[1].split("=", 1)[1], tmp_path / "boxes.json")]
    if task == "edges_bsds":
        rng = np.random.default_rng(0)
        bsds_fixtures.write_bsds_split(tmp_path / "bsds", "test", ["a", "b"], rng, 48, 64)
        data = [f"data.root={tmp_path / 'bsds'}"]
    config = compose_config(
        "evaluate",
        f"+eval={task}",
        *vit_t(mobile_sam),
        *data,
        *settings,
        "eval.max_images=1",
        "logger.kind=none",
    )
    out = tmp_path / "out"
    metrics = evaluate(OmegaConf.to_container(config, resolve=True), out)
    written = {k: v for k, v in metrics.items() if math.isfinite(v)}  # others are null
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx({k: written.get(k) for k in metrics})
    if task == "edges_bsds":
        assert [p.name for p in (out / "edges").glob("*.png")] == ["a.png"]
    else:
        predictions = json.loads((out / "predictions.json").read_text())
        assert predictions and len({p["image_id"] for p in predictions}) == 1
    main = {"points_lvis": "miou_1pt", "edges_bsds": "ods", "proposals_lvis": "ar@1000"}
    value = metrics[main.get(task, "ap")]
    assert value == -1 or 0.0 <= value <= 1.0  # COCOeval's -1: nothing to score
