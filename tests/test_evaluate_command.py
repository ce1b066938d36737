"""The evaluation command ``python -m sam_lightning.evaluate +eval=<task>``: every task config
composes, the adapter contract (metrics.json, W&B offline runs with the config and metrics),
``+eval=points_coco`` end to end on a generated COCO dataset, a two-job multirun giving two
W&B runs in one group, and the errors for a missing or unknown task."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from sam_lightning.entry_points import config_dir
from sam_lightning.evaluate import TASKS, UnknownTaskError, evaluate, model_factory
from sam_lightning.ops import rle_encode

EVAL_CONFIGS = sorted(p.stem for p in (config_dir() / "eval").glob("*.yaml"))
TINY_MODEL = ["model.type=vit_tiny", "model.image_size=256", "device=cpu", "progress=false"]


def compose_evaluate(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides), return_hydra_config=hydra)


# ------------------------------------------------------------------------------ configs


def test_the_points_configs_exist():
    assert {"points_coco", "points_lvis"} <= set(EVAL_CONFIGS)


@pytest.mark.parametrize("name", EVAL_CONFIGS)
def test_every_eval_config_composes(name):
    cfg = compose_evaluate(f"+eval={name}", hydra=True)
    assert cfg.eval.task == name and name in TASKS
    assert cfg.model.type == "vit_h" and cfg.model.checkpoint is None
    assert cfg.logger.kind == "wandb" and "data" in cfg
    assert cfg.hydra.run.dir == f"outputs/evaluate/{name}/vit_h"  # stable: ranks agree
    assert cfg.hydra.sweep.dir == f"outputs/evaluate_multirun/{cfg.sweep_name}"


@pytest.mark.parametrize("model", ["vit_b", "vit_l", "vit_h", "vit_tiny"])
def test_the_model_group_is_shared_with_training(model):
    cfg = compose_evaluate("+eval=points_coco", f"model={model}", "data.images=x")
    assert cfg.model.type == model and cfg.data.images == "x"
    assert OmegaConf.is_missing(cfg.data, "annotations")
    assert cfg.model.image_size == (256 if model == "vit_tiny" else 1024)


# ------------------------------------------------------------------ the adapter contract


def fake_adapter(job):
    """A harness that records its job and fails when ``job.eval`` asks it to."""
    if job.eval.get("fail"):
        raise RuntimeError("harness failed")
    (job.output_dir / "predictions.json").write_text("[]")
    return {"score": job.eval["value"], "count": len(job.data), "progress": float(job.progress)}


def library_config(**eval_cfg) -> dict:
    config = OmegaConf.to_container(
        compose_evaluate("+eval=points_coco", *TINY_MODEL), resolve=True
    )
    config["eval"] = {"task": "fake", **eval_cfg}
    config["data"] = {"a": 1, "b": 2}
    return config


def test_evaluate_writes_metrics_and_a_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "fake", f"{__name__}:fake_adapter")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = library_config(value=0.25)
    config["logger"]["name"] = "library_run"
    metrics = evaluate(config, tmp_path)
    assert metrics == {"score": 0.25, "count": 2.0, "progress": 0.0}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "predictions.json").read_text() == "[]"
    (run,) = wandb_runs(tmp_path)
    assert run["name"] == "library_run" and run["group"] == "" and run["exit_code"] == 0
    assert run["config"]["eval"] == {"task": "fake", "value": 0.25}
    assert run["config"]["model"]["type"] == "vit_tiny"
    assert run["history"] == metrics


def test_a_failing_harness_finishes_its_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "fake", f"{__name__}:fake_adapter")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(RuntimeError, match="harness failed"):
        evaluate(library_config(fail=True), tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    (run,) = wandb_runs(tmp_path)
    assert run["exit_code"] == 1


def test_logger_none_writes_no_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "fake", f"{__name__}:fake_adapter")
    config = library_config(value=1.0)
    config["logger"]["kind"] = "none"
    assert evaluate(config, tmp_path)["score"] == 1.0
    assert not (tmp_path / "wandb").exists()
    config["logger"]["kind"] = "csv"
    with pytest.raises(ValueError, match="'wandb' or 'none'"):
        evaluate(config, tmp_path)


def test_non_finite_metrics_are_written_as_json_null(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "fake", f"{__name__}:fake_adapter")
    config = library_config(value=float("nan"))
    config["logger"]["kind"] = "none"
    metrics = evaluate(config, tmp_path)
    assert np.isnan(metrics["score"])  # the returned metrics keep the NaN
    text = (tmp_path / "metrics.json").read_text()
    assert json.loads(text) == {"score": None, "count": 2.0, "progress": 0.0}  # strict JSON


def test_the_model_is_built_once_on_first_use(caplog):
    get_model = model_factory({"type": "vit_tiny", "image_size": 64}, "cpu")
    model = get_model()
    assert get_model() is model and not model.training
    assert model.image_encoder.img_size == 64
    assert "random weights" in caplog.text
    same = model_factory({"type": "vit_tiny", "image_size": 64}, "cpu")()
    first = next(model.parameters())
    assert first.equal(next(same.parameters()))  # seeded


def test_unknown_or_missing_task_lists_the_tasks(tmp_path):
    config = library_config()
    config["eval"] = {"task": "points_voc"}
    with pytest.raises(UnknownTaskError) as error:
        evaluate(config, tmp_path)
    assert all(task in str(error.value) for task in TASKS)
    config["eval"] = "???"
    with pytest.raises(UnknownTaskError, match=r"pass \+eval=<task>"):
        evaluate(config, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


# ------------------------------------------------------------------------- the command


def write_coco(root: Path) -> Path:
    """Two images with three boxes each as compressed RLEs, in COCO's layout."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, (h, w) in enumerate([(80, 120), (96, 64)], start=1):
        masks = np.zeros((3, h, w), dtype=bool)
        masks[0, 5:20, 5:30] = masks[1, 30:70, 10:50] = masks[2, 20:40, 40:60] = True
        image = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
        for mask in masks:
            image[mask] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(root / f"{i}.png")
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i}.png"})
        for mask, rle in zip(masks, rle_encode(masks)):
            segmentation = {"size": [h, w], "counts": rle["counts"].decode()}
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
    path = root / "instances.json"
    categories = [{"id": 1, "name": "box"}]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("coco")
    return [f"data.images={root}", f"data.annotations={write_coco(root)}"]


def run_command(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "sam_lightning.evaluate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_points_coco_end_to_end(tmp_path, coco):
    out = tmp_path / "out"
    result = run_command("+eval=points_coco", *TINY_MODEL, *coco, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert metrics["num_objects"] == len(predictions) == 6 and metrics["num_images"] == 2
    assert {f"miou_{n}pt" for n in (1, 2, 3, 5, 9)} | {"miou_1pt_oracle"} <= set(metrics)
    assert metrics["miou_1pt"] == pytest.approx(np.mean([p["ious"][0] for p in predictions]))
    assert "random weights" in result.stdout + result.stderr
    (run,) = wandb_runs(out)
    assert run["name"] == "points_coco_vit_tiny" and run["group"] == ""
    assert run["config"]["eval"]["num_clicks"] == [1, 2, 3, 5, 9]
    assert run["history"] == pytest.approx(metrics)
    assert (out / ".hydra" / "config.yaml").is_file()


def test_a_multirun_gives_one_wandb_run_per_job_in_one_group(tmp_path, coco):
    """``-m eval.max_images=1,2``: two jobs in ``outputs/evaluate_multirun/<sweep_name>/``,
    each its own finished W&B run, both in the group named after the sweep."""
    result = run_command(
        "-m",
        "+eval=points_coco",
        *TINY_MODEL,
        *coco,
        "eval.num_clicks=[1,2]",
        "eval.max_images=1,2",
        "sweep_name=click_sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "evaluate_multirun" / "click_sweep"
    runs = []
    for job in (0, 1):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["num_images"] == job + 1
        (run,) = wandb_runs(sweep / str(job))
        assert run["history"] == pytest.approx(metrics) and run["exit_code"] == 0
        runs.append(run)
    assert runs[0]["group"] == runs[1]["group"] == "click_sweep"
    assert [r["name"] for r in runs] == ["points_coco_vit_tiny_0", "points_coco_vit_tiny_1"]
    assert runs[0]["id"] != runs[1]["id"]
    assert [r["config"]["eval"]["max_images"] for r in runs] == [1, 2]
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[1].startswith("0,points_coco,vit_tiny,done,")
    assert "## points_coco" in (sweep / "summary.md").read_text()


def test_the_command_without_a_known_task_or_data_fails_clearly(tmp_path, coco):
    result = run_command(*TINY_MODEL, cwd=tmp_path)
    assert result.returncode == 2
    assert "+eval=<task>" in result.stderr and all(task in result.stderr for task in TASKS)
    result = run_command("+eval=points_coco", *TINY_MODEL, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "set data.annotations=..., data.images=..." in result.stdout + result.stderr
    result = run_command(
        "+eval=points_coco", "eval.task=points_voc", *coco, f"hydra.run.dir={tmp_path / 'x'}"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "eval.task=points_voc: not one of" in output and "did you mean points_coco" in output
    assert not (tmp_path / "x" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("task", "data"),
    [
        ("points_coco", ["data.images={root}", "data.annotations={root}/missing.json"]),
        ("edges_bsds", ["data.root={root}/no_bsds"]),
        ("instances_coco", ["data.images={root}", "data.annotations={root}/instances.json",
                            "data.detections={root}/no_boxes.json"]),
    ],
)  # fmt: skip
def test_a_missing_data_path_fails_before_a_model_or_wandb_run(task, data, tmp_path, coco):
    root = coco[0].split("=", 1)[1]
    args = [item.format(root=root) for item in data]
    out = tmp_path / "out"
    result = run_command(f"+eval={task}", *TINY_MODEL, *args, f"hydra.run.dir={out}")
    output = result.stdout + result.stderr
    missing = args[-1].split("=", 1)
    assert result.returncode == 2, output[-3000:]
    assert f"{missing[0]}={missing[1]}: not found" in output and "Traceback" not in output
    assert not (out / "wandb").exists() and "random weights" not in output


def test_bad_launch_settings_fail_before_anything_runs(tmp_path, coco):
    result = run_command("+eval=points_coco", *TINY_MODEL, *coco, "devices=0", cwd=tmp_path)
    assert result.returncode == 2 and "devices=0: must be at least 1" in result.stderr
    result = run_command("+eval=points_coco", *TINY_MODEL, *coco, "commit_every=0", cwd=tmp_path)
    assert result.returncode == 2 and "commit_every=0: must be at least 1" in result.stderr
    env_form = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "NODE_RANK": "0", "WORLD_SIZE": "3"}
    result = run_command(
        "+eval=points_coco", *TINY_MODEL[:2], *coco, "devices=2", cwd=tmp_path, env=env_form
    )
    output = result.stdout + result.stderr
    assert (
        result.returncode == 2 and "WORLD_SIZE=3 does not match num_nodes=1 x devices=2" in output
    )
    assert not list(tmp_path.rglob("metrics.json"))


# -------------------------------------------------------------------- W&B offline files


def wandb_records(path: Path):
    """The protobuf records of an offline run's ``.wandb`` file (W&B's 7-byte header, then
    LevelDB log blocks of 32 KiB: CRC, length, type, data; types 2-4 split a record)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if len(data) < 7:  # the header is not written yet
        return
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if (left := 32768 - position % 32768) < 7:
            position += left
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        if position + 7 + length > len(data):  # still being written
            return
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(path: Path, timeout: float = 30.0) -> list:
    """The records of a finished run: wandb's service writes the file after ``finish()``
    returns, so wait (up to ``timeout`` seconds) for the exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.1)


def wandb_runs(run_dir: Path) -> list[dict]:
    """Each offline W&B run under ``run_dir/wandb``: id, name, group, config, the logged
    metrics and the exit code."""
    runs = []
    for file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run = {"history": {}, "config": {}, "exit_code": None}
        for record in finished_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, name=record.run.display_name)
                run["group"] = record.run.run_group
                for item in record.run.config.update:
                    if not item.key.startswith("_"):
                        run["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        run["history"][key] = json.loads(item.value_json)
            elif kind == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs
