"""``python -m sam_lightning.evaluate`` on several processes (gloo on loopback): the same
predictions and metrics at every world size for proposals (LVIS) and points (COCO), resume at
another world size after ``kill -9`` without recomputing finished images, refusal to overwrite
an unfinished run, and a failed rank ending the job with its name."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import coco_fixtures
import pytest
from loopback import finish, start

from sam_lightning.evaluation.item_map import read_parts

pytestmark = pytest.mark.slow

# The real command line as a script (Lightning's launcher re-runs it in the processes it
# starts). Every item, once computed, is appended to EVAL_TEST_LOG as "<rank> <index>";
# EVAL_TEST_SLEEP slows each item down; EVAL_TEST_FAIL_RANK makes that rank raise at its
# second item.
LAUNCH = textwrap.dedent(
    """
    import os, sys, time
    import torch.distributed as dist
    from sam_lightning.evaluation import item_map

    add = item_map._Chunks.add
    calls = []

    def testing_add(self, index, value):
        rank = dist.get_rank() if dist.is_initialized() else 0
        calls.append(index)
        if str(rank) == os.environ.get("EVAL_TEST_FAIL_RANK") and len(calls) == 2:
            raise RuntimeError("out of memory (a test's failure)")
        with open(os.environ["EVAL_TEST_LOG"], "a") as log:
            log.write(f"{rank} {index}\\n")
        time.sleep(float(os.environ.get("EVAL_TEST_SLEEP", "0")))
        add(self, index, value)

    item_map._Chunks.add = testing_add
    from sam_lightning.evaluate import main
    sys.exit(main())
    """
)
SETTINGS = [
    "model.type=vit_tiny",
    "model.image_size=256",
    "accelerator=cpu",
    "progress=false",
    "logger.kind=none",
    "commit_every=1",
]
TASKS = {
    "proposals_lvis": ["eval.points_per_side=4", "eval.max_proposals=50", "data.format=lvis"],
    "points_coco": ["eval.num_clicks=[1,2]"],
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, list[str]]:
    """An LVIS file for proposals and a COCO file for points, 6 images each."""
    found = {}
    for task, lvis in (("proposals_lvis", True), ("points_coco", False)):
        root = tmp_path_factory.mktemp(task)
        document = coco_fixtures.make_ground_truth(7, lvis=lvis)
        coco_fixtures.write_images(root / "images", document)
        coco_fixtures.write_document(root / "gt.json", document)
        found[task] = [f"data.images={root / 'images'}", f"data.annotations={root / 'gt.json'}"]
    return found


def evaluate(run_dir: Path, task: str, data: list[str], *overrides: str, env=None, **kw):
    script = run_dir.parent / "launch_evaluate.py"
    if not script.exists():
        script.write_text(LAUNCH)
    environment = {"EVAL_TEST_LOG": str(run_dir.parent / f"{run_dir.name}.calls"), **(env or {})}
    command = [sys.executable, str(script), f"+eval={task}", *SETTINGS, *TASKS[task], *data]
    return start([*command, f"hydra.run.dir={run_dir}", *overrides], environment, **kw)


def calls(run_dir: Path) -> list[tuple[int, int]]:
    path = run_dir.parent / f"{run_dir.name}.calls"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def outputs(run_dir: Path) -> tuple[bytes, bytes]:
    return (run_dir / "metrics.json").read_bytes(), (run_dir / "predictions.json").read_bytes()


@pytest.mark.parametrize("task", list(TASKS))
def test_the_metrics_do_not_depend_on_the_world_size(task, datasets, tmp_path):
    status, log = finish(evaluate(tmp_path / "one", task, datasets[task]))
    assert status == 0, log[-3000:]
    one = outputs(tmp_path / "one")
    assert json.loads(one[0])  # metrics were computed
    status, log = finish(evaluate(tmp_path / "two", task, datasets[task], "devices=2"))
    assert status == 0, log[-3000:]
    assert outputs(tmp_path / "two") == one
    done, alone = calls(tmp_path / "two"), calls(tmp_path / "one")
    assert sorted(index for _, index in done) == [index for _, index in alone]  # each once
    assert len(alone) >= 5
    assert {rank for rank, _ in done} == {0, 1}
    assert (tmp_path / "two" / "evaluate.rank1.log").is_file()


def test_torchrun_ranks_give_the_same_metrics(datasets, tmp_path):
    """Ranks started by torchrun (Lightning's TorchElasticEnvironment), not by the command."""
    task, data = "points_coco", datasets["points_coco"]
    status, log = finish(evaluate(tmp_path / "one", task, data))
    assert status == 0, log[-3000:]
    script = tmp_path / "launch_evaluate.py"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*torchrun, str(script), f"+eval={task}", *SETTINGS, *TASKS[task], *data]
    run_dir = tmp_path / "torchrun"
    calls_log = {"EVAL_TEST_LOG": str(tmp_path / "torchrun.calls")}
    status, log = finish(start([*command, f"hydra.run.dir={run_dir}", "devices=2"], calls_log))
    assert status == 0, log[-3000:]
    assert outputs(run_dir) == outputs(tmp_path / "one")
    assert {rank for rank, _ in calls(run_dir)} == {0, 1}


def test_kill_9_then_resume_at_another_world_size(datasets, tmp_path):
    task, data = "proposals_lvis", datasets["proposals_lvis"]
    status, log = finish(evaluate(tmp_path / "reference", task, data))
    assert status == 0, log[-3000:]
    run_dir = tmp_path / "run"
    process = evaluate(
        run_dir, task, data, "devices=2", env={"EVAL_TEST_SLEEP": "1.5"}, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while len(calls(run_dir)) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # every rank at once, as a lost node would
    process.communicate(timeout=30)
    before = calls(run_dir)
    committed = set(read_parts(run_dir / "_progress" / "parts"))
    assert 1 <= len(committed) < 6, before
    status, log = finish(evaluate(run_dir, task, data))  # no resume=true: refused
    assert status == 2 and "unfinished run: resume=true continues it" in log, log[-3000:]
    status, log = finish(evaluate(run_dir, task, data, "resume=true", "devices=3"))
    assert status == 0, log[-3000:]
    after = calls(run_dir)[len(before) :]
    assert committed.isdisjoint(index for _, index in after)  # nothing done twice
    assert sorted(committed | {index for _, index in after}) == list(range(6))
    assert outputs(run_dir) == outputs(tmp_path / "reference")
    assert not [p for p in run_dir.rglob("*.tmp")]
    status, log = finish(evaluate(run_dir, task, data, "resume=true", "eval.max_proposals=40"))
    assert status == 2 and "other settings (differ: manifest.eval.max_proposals)" in log, log


def test_a_failed_rank_ends_the_job_naming_it(datasets, tmp_path):
    task, data = "points_coco", datasets["points_coco"]
    process = evaluate(tmp_path / "run", task, data, "devices=2", env={"EVAL_TEST_FAIL_RANK": "1"})
    status, log = finish(process, timeout=200)
    assert status == 1, log[-3000:]
    assert "rank 1 failed: RuntimeError: out of memory (a test's failure)" in log
    assert not (tmp_path / "run" / "metrics.json").exists()
