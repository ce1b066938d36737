"""``summary.csv`` / ``summary.md`` of an evaluation sweep (:mod:`sam_lightning.sweep_summary`):
the paper's order, every job with its overrides and metrics, jobs without metrics listed;
and a sweep through hydra-submitit-launcher's ``submitit_local`` whose jobs each run on two
ranks (the path of ``+cluster=slurm``)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from loopback import finish, start
from test_evaluate_command import TINY_MODEL, write_coco

from sam_lightning.sweep_summary import read_jobs, summary_csv, write_sweep_summary


def fake_job(sweep: Path, number: int, task: str, model: str, metrics: dict | None) -> None:
    hydra_dir = sweep / str(number) / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text(
        yaml.safe_dump({"eval": {"task": task}, "model": {"type": model}})
    )
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump([f"+eval={task}", f"model={model}"]))
    if metrics is not None:
        (sweep / str(number) / "metrics.json").write_text(json.dumps(metrics))


def test_rows_follow_the_papers_tables(tmp_path):
    fake_job(tmp_path, 0, "instances_coco", "vit_h", {"ap": 0.46, "ap50": 0.7})
    fake_job(tmp_path, 1, "points_coco", "vit_h", {"miou_1pt": 0.5, "miou_2pt": 0.6})
    fake_job(tmp_path, 2, "points_coco", "vit_b", {"miou_1pt": 0.4, "miou_2pt": 0.55})
    fake_job(tmp_path, 3, "proposals_lvis", "vit_l", None)
    (tmp_path / "multirun.yaml").write_text("not a job")
    rows = read_jobs(tmp_path)
    assert [(r.task, r.model, r.job) for r in rows] == [
        ("points_coco", "vit_b", 2),
        ("points_coco", "vit_h", 1),
        ("proposals_lvis", "vit_l", 3),
        ("instances_coco", "vit_h", 0),
    ]
    table = list(csv.DictReader(io.StringIO(summary_csv(rows))))
    assert list(table[0]) == [
        "job", "task", "model", "status", "overrides", "miou_1pt", "miou_2pt", "ap", "ap50"
    ]  # fmt: skip
    assert (
        table[0]["miou_1pt"] == "0.4" and table[0]["overrides"] == "+eval=points_coco model=vit_b"
    )
    assert table[2]["status"] == "no metrics" and table[2]["miou_1pt"] == ""
    assert table[3]["ap"] == "0.46" and table[3]["miou_1pt"] == ""
    csv_path, md_path = write_sweep_summary(tmp_path)
    markdown = md_path.read_text()
    assert markdown.index("## points_coco") < markdown.index("## proposals_lvis")
    assert "| 2 | vit_b | done | `+eval=points_coco` `model=vit_b` | 0.4000 | 0.5500 |" in markdown
    assert "| 3 | vit_l | no metrics | `+eval=proposals_lvis` `model=vit_l` |" in markdown
    assert csv_path.read_text() == summary_csv(rows)


def test_an_empty_directory_gives_no_summary(tmp_path):
    assert write_sweep_summary(tmp_path) is None and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_submitit_local_sweep_of_two_rank_jobs(tmp_path):
    """``-m +cluster=local devices=2``: each job a submitit job of 2 tasks, which are its ranks;
    the metrics equal those of one process, and summary.csv lists both jobs."""
    data_root = tmp_path / "coco"
    data_root.mkdir()
    data = [f"data.images={data_root}", f"data.annotations={write_coco(data_root)}"]
    settings = [*TINY_MODEL[:2], "progress=false", "logger.kind=none", "eval.num_clicks=[1,2]"]
    command = [sys.executable, "-m", "sam_lightning.evaluate", "+eval=points_coco", *settings]
    sweep = [
        *command[:3],
        "-m",
        *command[3:],
        *data,
        "+cluster=local",
        "devices=2",
        "accelerator=cpu",
    ]
    status, log = finish(
        start([*sweep, "eval.max_images=1,2", "sweep_name=local"], {}, cwd=tmp_path), 600
    )
    assert status == 0, log[-4000:]
    sweep_dir = tmp_path / "outputs" / "evaluate_multirun" / "local"
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))
    assert [f"eval.max_images={n}" in row["overrides"].split() for n, row in zip((1, 2), rows)] == [
        True,
        True,
    ]
    for job, row in enumerate(rows):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        assert float(row["miou_1pt"]) == metrics["miou_1pt"] and row["status"] == "done"
        assert (sweep_dir / str(job) / "evaluate.rank1.log").is_file()  # two ranks ran it
        alone = tmp_path / f"alone{job}"
        single = [*command, *data, "device=cpu", f"eval.max_images={job + 1}"]
        status, log = finish(start([*single, f"hydra.run.dir={alone}"], {}, cwd=tmp_path))
        assert status == 0, log[-3000:]
        assert json.loads((alone / "metrics.json").read_text()) == metrics
