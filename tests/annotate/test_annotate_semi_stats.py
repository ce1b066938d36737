"""Semi-automatic pre-fill (generator and amg-directory sources), statistics, the stats
command and the COCO export, and the command line (Hydra config, bind refusal, precompute)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from sam_lightning import amg, ops
from sam_lightning.annotate import stats
from sam_lightning.annotate.cli import run_annotate, run_from_config
from sam_lightning.annotate.semi import DirectoryMasks, GeneratorMasks
from sam_lightning.data import SA1BDataset, read_image
from sam_lightning.entry_points import config_dir
from sam_lightning.inference.automatic import SamAutomaticMaskGenerator

REPO = Path(__file__).resolve().parents[2]
#: Random weights pass no real threshold: keep every mask of a 3 x 3 grid (no NMS).
KEEP_ALL = {
    "points_per_side": 3,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


def full_mask(height: int, width: int) -> dict:
    return {"size": [height, width], "counts": [0, height * width]}


def test_semi_prefills_model_masks(make_tool, serve, images, tmp_path, model):
    tool = make_tool(mode="semi", mask_source=GeneratorMasks(model, **KEEP_ALL))
    _, client = serve(tool)
    prepared = client.post("api/images/a.png/embed").json()
    expected = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **KEEP_ALL).generate(
        read_image(images / "a.png")
    )
    assert prepared["prefilled"] == len(expected) > 0
    annotations = client.get("api/images/a.png/masks").json()["annotations"]
    assert [a["segmentation"]["counts"] for a in annotations] == [
        r["segmentation"]["counts"] for r in expected
    ]
    first = annotations[0]
    assert first["source"] == "model" and first["seconds"] is None
    assert first["predicted_iou"] == pytest.approx(expected[0]["predicted_iou"])
    assert first["prompts"] == {"points": [[*expected[0]["point_coords"][0], 1]], "box": None}
    assert set(first) >= {"stability_score", "crop_box", "annotator", "session", "created"}

    assert client.post("api/images/a.png/embed").json()["prefilled"] == 0  # only once
    kept = len(annotations) - 1
    client.delete(f"api/images/a.png/masks/{annotations[0]['id']}")  # the annotator rejects one
    response = client.post(
        "api/images/a.png/masks", {"mask": full_mask(48, 64), "seconds": 7.0, "source": "person"}
    )
    assert response.status_code == 201
    masks = client.get("api/images/a.png/masks").json()["annotations"]
    assert [a["source"] for a in masks] == ["model"] * kept + ["person"]
    document = json.loads((tmp_path / "out" / "a.json").read_text())
    assert document["annotate"]["prefill"]["masks"] == len(expected)

    rows = {(r["annotator"], r["source"]): r for r in client.get("api/stats").json()["rows"]}
    assert rows[("alice", "model")]["proposed"] == len(expected)
    assert rows[("alice", "model")]["masks"] == kept
    assert rows[("alice", "model")]["seconds_per_mask"] is None
    assert rows[("alice", "person")]["seconds_per_mask"] == 7.0
    assert len(SA1BDataset(tmp_path / "out", image_root=images)[0]["annotations"]) == kept + 1


def test_semi_from_an_amg_directory(make_tool, serve, images, tmp_path, model):
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **KEEP_ALL)
    amg.generate_folder(generator, images, tmp_path / "amg", progress=False)
    document = json.loads((tmp_path / "amg" / "b.json").read_text())
    threshold = float(np.median([a["predicted_iou"] for a in document["annotations"]]))
    source = DirectoryMasks(tmp_path / "amg", pred_iou_thresh=threshold)
    _, client = serve(make_tool(mode="semi", mask_source=source))
    client.post("api/images/b.jpg/embed")
    saved = client.get("api/images/b.jpg/masks").json()["annotations"]
    wanted = [a for a in document["annotations"] if a["predicted_iou"] >= threshold]
    assert 0 < len(saved) == len(wanted) < len(document["annotations"])
    assert [a["segmentation"] for a in saved] == [a["segmentation"] for a in wanted]
    assert {a["source"] for a in saved} == {"model"}
    (tmp_path / "amg" / "c.json").unlink()
    assert client.post("api/images/c.png/embed").json()["prefilled"] == 0  # nothing to offer


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
def test_stats_table_and_coco_export(make_tool, serve, images, tmp_path, model, capsys):
    output = tmp_path / "out"
    sessions = [("alice", "s1", [10.0, 20.0]), ("bob", "s2", [4.0]), ("alice", "s3", [6.0])]
    for annotator, session, times in sessions:
        _, client = serve(make_tool(annotator=annotator, session=session))
        for i, seconds in enumerate(times):
            name, size = (("a.png", (48, 64)), ("c.png", (32, 32)))[i % 2]
            mask = np.zeros(size, dtype=bool)
            mask[i : i + 5, 2 * i : 2 * i + 7] = True
            rle = {"size": list(size), "counts": ops.rle_encode(mask)[0]["counts"].decode()}
            body = {"mask": rle, "seconds": seconds}
            assert client.post(f"api/images/{name}/masks", body).status_code == 201
    semi = make_tool(
        annotator="carol", session="s4", mode="semi", mask_source=GeneratorMasks(model, **KEEP_ALL)
    )
    proposed = semi.prefill(semi.entry("b.jpg"))

    result = stats.annotation_stats(output)
    rows = {(r["annotator"], r["session"], r["source"]): r for r in result["rows"]}
    assert rows[("alice", "s1", "person")] | {} == {
        "annotator": "alice", "session": "s1", "source": "person", "images": 2, "masks": 2,
        "masks_per_image": 1.0, "timed": 2, "seconds": 30.0, "seconds_per_mask": 15.0,
        "proposed": None,
    }  # fmt: skip
    assert rows[("bob", "s2", "person")]["seconds_per_mask"] == 4.0
    assert rows[("*", "*", "person")]["masks"] == 4
    assert rows[("*", "*", "person")]["seconds_per_mask"] == 10.0
    assert rows[("*", "*", "person")]["images"] == 2
    assert (
        rows[("carol", "s4", "model")]["proposed"] == proposed == rows[("*", "*", "model")]["masks"]
    )
    assert result["files"] == 3

    coco_file = tmp_path / "export" / "instances.json"
    assert stats.main([str(output), "--coco", str(coco_file)]) == 0
    table = capsys.readouterr().out
    assert "s/mask" in table and "alice" in table and "15.0" in table
    assert not [p for p in coco_file.parent.iterdir() if p.name != "instances.json"]
    coco = COCO(str(coco_file))
    assert coco.loadCats(coco.getCatIds()) == [
        {"id": 1, "name": "object", "supercategory": "object"}
    ]
    dataset = SA1BDataset(output, image_root=images)
    total = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        image_id = sample["image_info"]["image_id"]
        coco_anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert [a["id"] for a in coco_anns] == [a["id"] for a in sample["annotations"]]
        for ours, theirs in zip(sample["annotations"], coco_anns):
            assert theirs["iscrowd"] == 0 and theirs["category_id"] == 1
            assert theirs["area"] == ours["area"] and theirs["bbox"] == ours["bbox"]
            np.testing.assert_array_equal(
                coco.annToMask(theirs), ops.rle_decode(ours["segmentation"])[0].numpy()
            )
            encoded = dict(theirs["segmentation"], counts=theirs["segmentation"]["counts"].encode())
            assert coco_mask.area(encoded) == ours["area"]
        total += len(coco_anns)
    assert total == len(coco.getAnnIds()) == 4 + proposed
    capsys.readouterr()
    assert stats.main([str(output), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 3
    assert stats.main([str(tmp_path / "missing")]) == 2


def test_config_composes_and_unsafe_bind_fails_before_the_model(images, tmp_path):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "annotate",
            overrides=[f"images={images}", f"output={tmp_path / 'out'}", "server.host=0.0.0.0"],
        )
    assert cfg.model.type == "vit_b" and cfg.mode == "manual" and cfg.server.token is None
    assert set(cfg.semi.generator) <= set(
        __import__("inspect").signature(SamAutomaticMaskGenerator).parameters
    )
    assert run_from_config(cfg) == 2  # refused: no token
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="precompute=true fills the disk cache"):
        run_annotate(images, tmp_path / "out", precompute=True, disk_cache=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        run_annotate(images, tmp_path / "out", mode="auto", model_type="vit_tiny")


def _command(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sam_lightning.annotate", *overrides],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )  # fmt: skip


def test_command_precompute_and_refusals(images, tmp_path):
    output = tmp_path / "out"
    done = _command(
        f"images={images}", f"output={output}", "model.type=vit_tiny", "model.image_size=64",
        "precompute=true", "mode=semi", "semi.generator.points_per_side=2",
        "semi.generator.pred_iou_thresh=0", "semi.generator.stability_score_thresh=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (output / ".embeddings").iterdir()) == [
        "a.png.pt", "b.jpg.pt", "c.png.pt", "model.json"
    ]  # fmt: skip
    assert len(SA1BDataset(output, image_root=images)) == 3  # semi: pre-filled as well
    log = done.stdout + done.stderr  # Hydra logs to stdout
    assert "random weights" in log and "3 embedded" in log
    assert (output / "_logs").is_dir()

    refused = _command(f"images={images}", f"output={output}", "server.host=0.0.0.0")
    assert refused.returncode == 2 and "server.token" in refused.stdout + refused.stderr
    missing = _command(f"output={output}")
    assert missing.returncode == 2 and "set images=..." in missing.stderr
