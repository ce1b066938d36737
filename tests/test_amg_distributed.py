"""``python -m sam_lightning.amg`` on several processes (gloo on loopback): the same files at
every world size, each image once, resume at another world size after ``kill -9``, and a
failed or vanished rank ending the job with its name."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from loopback import finish, free_port, node_env, start
from PIL import Image

from sam_lightning.data.sa1b import read_sa1b_json
from sam_lightning.file_io import is_temp_file

# The real command line, run as a script (Lightning's launcher re-runs it in the processes it
# starts, hooks included); AMG_TEST_SLEEP slows every image down (so a run can be killed
# part-way), AMG_TEST_FAIL_RANK makes that rank raise (or, with AMG_TEST_VANISH, exit without
# a word) at its second image.
LAUNCH = textwrap.dedent(
    """
    import os, sys, time
    import torch.distributed as dist
    from sam_lightning.inference.automatic import SamAutomaticMaskGenerator

    generate = SamAutomaticMaskGenerator.generate
    calls = []

    def testing_generate(self, image):
        calls.append(1)
        rank = dist.get_rank() if dist.is_initialized() else 0
        if str(rank) == os.environ.get("AMG_TEST_FAIL_RANK") and len(calls) == 2:
            if os.environ.get("AMG_TEST_VANISH"):
                os._exit(0)
            raise RuntimeError("out of memory (a test's failure)")
        time.sleep(float(os.environ.get("AMG_TEST_SLEEP", "0")))
        return generate(self, image)

    SamAutomaticMaskGenerator.generate = testing_generate
    from sam_lightning.amg import main
    sys.exit(main())
    """
)

SETTINGS = [
    "model.type=vit_tiny",
    "model.image_size=256",
    "amg.points_per_side=4",
    "amg.pred_iou_thresh=0",
    "amg.stability_score_thresh=0",
    "amg.box_nms_thresh=1.0",
    "accelerator=cpu",
    "progress=false",
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """7 images of different sizes, one of them unreadable."""
    directory = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for index in range(6):
        height, width = (int(v) for v in rng.integers(40, 96, size=2))
        image = np.zeros((height, width, 3), np.uint8)
        image[: height // 2] = rng.integers(0, 255, 3)
        image[:, : width // 3] = rng.integers(0, 255, 3)
        image += rng.integers(0, 20, image.shape, dtype=np.uint8)
        Image.fromarray(image).save(directory / f"im{index}.png")
    (directory / "im9.png").write_bytes(b"not a png")
    return directory


def amg(photos: Path, output: Path, *overrides: str, env: dict[str, str] | None = None, **kw):
    script = photos.parent / "launch_amg.py"
    if not script.exists():
        script.write_text(LAUNCH)
    command = [sys.executable, str(script), f"input={photos}", f"output={output}"]
    if not any(override.startswith("images_per_batch=") for override in overrides):
        overrides = ("images_per_batch=1", *overrides)  # bit-exact files at every world size
    return start([*command, *SETTINGS, *overrides], env or {}, **kw)


def annotation_files(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output.glob("*.json")) if p.name[0] != "_"}


def summary_of(output: Path) -> dict:
    summary = json.loads((output / "_summary.json").read_text())
    summary.pop("seconds")
    summary.pop("output")
    return summary


def test_the_files_do_not_depend_on_the_world_size(photos, tmp_path):
    status, log = finish(amg(photos, tmp_path / "one"))
    assert status == 1, log  # the unreadable image
    one, first = annotation_files(tmp_path / "one"), summary_of(tmp_path / "one")
    assert len(one) == 6 and first.pop("world_size") == 1
    assert first["written"] == 6 and first["images"] == 7
    for world_size in (2, 3):
        output = tmp_path / f"world{world_size}"
        status, log = finish(amg(photos, output, f"devices={world_size}"))
        assert status == 1, log
        assert annotation_files(output) == one, world_size
        summary = summary_of(output)
        assert summary.pop("world_size") == world_size and summary == first
        logs = output / "_logs"
        texts = [(logs / "amg.log").read_text()]
        texts += [(logs / f"amg.rank{r}.log").read_text() for r in range(1, world_size)]
        assert sum("skipping image" in text and "im9.png" in text for text in texts) == 1
        totals = [
            json.loads((logs / "ranks" / f"rank{r}.json").read_text())["total"]
            for r in range(world_size)
        ]
        assert sum(totals) == 7 and max(totals) - min(totals) <= 1  # each image on one rank
    assert [f["image"] for f in first["failed"]] == [str(photos / "im9.png")]


def assert_within_batch_tolerance(ours: dict[str, bytes], reference: dict[str, bytes]) -> None:
    """The tolerance of ``images_per_batch > 1`` (README): per image the same masks in the
    same order, each with IoU >= 0.99 and predicted IoU and stability within 1e-3 of one
    image at a time."""
    from pycocotools import mask as mask_utils

    assert ours.keys() == reference.keys()
    for name in reference:
        mine = json.loads(ours[name])["annotations"]
        theirs = json.loads(reference[name])["annotations"]
        assert len(mine) == len(theirs), name
        for a, b in zip(mine, theirs):
            assert a["id"] == b["id"] and a["point_coords"] == b["point_coords"]
            iou = mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0]
            assert iou >= 0.99 or a["segmentation"] == b["segmentation"], (name, a["id"])
            assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-3
            assert abs(a["stability_score"] - b["stability_score"]) <= 1e-3


def test_the_default_batch_is_within_its_tolerance_at_any_world_size(photos, tmp_path):
    status, log = finish(amg(photos, tmp_path / "single"))
    assert status == 1, log
    reference = annotation_files(tmp_path / "single")
    for world_size in (1, 2):
        output = tmp_path / f"batched{world_size}"
        status, log = finish(
            amg(photos, output, f"devices={world_size}", "images_per_batch=2", "num_workers=0")
        )
        assert status == 1, log
        assert_within_batch_tolerance(annotation_files(output), reference)


def test_kill_9_then_resume_at_another_world_size(photos, tmp_path):
    output = tmp_path / "out"
    process = amg(
        photos, output, "devices=2", env={"AMG_TEST_SLEEP": "1.5"}, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(annotation_files(output)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("im*.json")}
    assert 2 <= len(before) < 6, before

    status, log = finish(amg(photos, output, "devices=3"))
    assert status == 1, log
    files = annotation_files(output)
    assert sorted(files) == [f"im{i}.json" for i in range(6)]
    for name in files:
        read_sa1b_json(output / name)  # every one valid
    after = {name: (output / name).stat().st_mtime_ns for name in before}
    assert after == before  # finished images were not recomputed
    assert not [p for p in output.rglob("*") if is_temp_file(p)]
    summary = summary_of(output)
    assert summary["skipped"] == len(before) and summary["written"] == 6 - len(before)
    assert summary["world_size"] == 3 and summary["completed"]


def test_a_failed_rank_ends_the_job_naming_it(photos, tmp_path):
    start = time.monotonic()
    status, log = finish(
        amg(photos, tmp_path / "out", "devices=2", env={"AMG_TEST_FAIL_RANK": "1"}), timeout=120
    )
    assert status != 0
    assert "rank: 1" in log or "rank 1" in log, log[-3000:]
    assert time.monotonic() - start < 120


def test_a_vanished_node_ends_the_job_after_the_timeout(photos, tmp_path):
    """Two "nodes" in the env-var form (no launcher watches them): node 1 exits without a
    word after its first image; node 0 waits timeout_s for news and then fails naming it."""
    port, output = free_port(), tmp_path / "out"
    processes = [
        amg(
            photos,
            output,
            "num_nodes=2",
            "timeout_s=6",
            env={**node_env(port, rank, 2), "AMG_TEST_FAIL_RANK": "1", "AMG_TEST_VANISH": "1"},
        )
        for rank in range(2)
    ]
    (status, log), (vanished, _) = finish(processes[0], 180), finish(processes[1], 180)
    assert vanished == 0  # it left "successfully", mid-shard
    assert status == 1, log[-3000:]
    assert "rank 1 stopped after" in log and "nothing from it for timeout_s=6 s" in log
    assert not (output / "_summary.json").exists() or not summary_of(output)["completed"]


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        (["devices=0"], {}, "devices=0: must be at least 1"),
        (["devices=2"], {"WORLD_SIZE": "3"}, "WORLD_SIZE=3 does not match num_nodes=1 x devices=2"),
        (["device=cpu", "devices=2"], {}, "device=cpu names one device"),
        (
            ["num_nodes=2", "timeout_s=3"],
            {**node_env(1, 1, 2)},  # nothing listens on port 1
            "rank 1 could not join the job at MASTER_ADDR:MASTER_PORT=127.0.0.1:1 within",
        ),
    ],
)
def test_launch_settings_that_cannot_work_exit_2(photos, tmp_path, overrides, env, message):
    status, log = finish(amg(photos, tmp_path / "out", *overrides, env=env), timeout=120)
    assert status == 2, log[-3000:]
    assert message in log
    assert "Traceback" not in log
