"""How a training run starts: ``resume`` is ``false``, ``true`` or ``must``; a resumed run
continues the one CSV log of its run directory; ``last.ckpt`` is saved without Lightning's
``weights_only`` notice; a missing path or checkpoint stops the run before anything is built
(exit status 2, one line per problem)."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_train_entry import TINY, config

from sam_lightning.data.datamodule import missing_paths
from sam_lightning.entry_points import check_command_line, checkable, config_dir
from sam_lightning.settings import train as settings
from sam_lightning.train import StartError, train

FAST = ["checkpoint.every_n_steps=0", "trainer.val_check_interval=2"]


def run_command(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sam_lightning.train", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's one CSV log (asserting that there is one)."""
    logs = sorted((run_dir / "csv").glob("*/metrics.csv"))
    assert [path.parent.name for path in logs] == ["version_0"]
    with logs[0].open(newline="") as file:
        return list(csv.DictReader(file))


def logged_cells(rows: list[dict[str, str]]) -> list[tuple[int, str]]:
    """``(step, metric)`` of every logged value (a training and a validation row may share a
    step: Lightning logs a validation at the step before it)."""
    return [
        (int(row["step"]), name)
        for row in rows
        for name, value in row.items()
        if name not in ("step", "epoch") and value
    ]


def losses(rows: list[dict[str, str]]) -> dict[int, float]:
    return {int(row["step"]): float(row["train/loss"]) for row in rows if row.get("train/loss")}


# ------------------------------------------------------------------------ resume values


@pytest.mark.parametrize("value, expected", [("must", "must"), ("true", True), ("false", False)])
def test_resume_values_compose_and_pass_the_check(value, expected):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"resume={value}"])
    assert cfg.resume == expected
    assert settings.check(checkable(cfg)) == []


def test_an_unknown_resume_value_is_refused_with_exit_2(tmp_path):
    problems, _ = check_command_line(
        "train", ["+exp=demo", "resume=maybe"], settings.TrainSettings, settings.check
    )
    assert [p for p in problems if p.startswith("resume=maybe:")] == problems != []
    result = run_command("+exp=demo", "resume=maybe", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "resume=maybe:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "outputs").exists()


def test_resume_true_without_a_checkpoint_warns_and_starts_from_scratch(tmp_path, caplog):
    """... and the ``last.ckpt`` saves pass ``weights_only``: Lightning's notice that it
    defaulted to ``False`` is not logged (its logger may not propagate: listen to it)."""
    notices: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: notices.append(record.getMessage())  # type: ignore[method-assign]
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="sam_lightning.train"):
            metrics = train(config("trainer.max_steps=2", "resume=true", *FAST), tmp_path)
    finally:
        lightning_log.removeHandler(handler)
    last = tmp_path / "checkpoints" / "last.ckpt"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(last) in w and "starting from scratch" in w for w in warnings), warnings
    assert metrics["step"] == 2 and last.is_file()
    assert any("`max_steps=2` reached" in n for n in notices)  # the handler hears Lightning
    assert not [n for n in notices if "weights_only" in n], notices


def test_resume_must_without_a_checkpoint_refuses_to_start(tmp_path):
    with pytest.raises(StartError) as refused:
        train(config("resume=must"), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert len(refused.value.lines) == 1 and str(last) in refused.value.lines[0]
    run_dir = tmp_path / "run"
    result = run_command(*TINY, "resume=must", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert error_lines(result) == [
        f"error: resume=must: no checkpoint to continue from, {last} does not exist"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (run_dir / "csv").exists() and not (run_dir / "metrics.json").exists()


# ------------------------------------------------------------------ one continued CSV log


def test_a_resumed_run_continues_the_one_csv_log(tmp_path):
    """Two steps, resumed (``resume=must``) to four; then, as after a crash that left the
    checkpoint of step 2 behind, resumed from it again: one ``csv/version_0/metrics.csv``
    throughout, the steps before the checkpoint kept, those after it logged anew, no value
    logged twice, and the repeated steps log what they logged the first time."""
    train(config("trainer.max_steps=2", *FAST), tmp_path)
    first = csv_rows(tmp_path)
    assert sorted(losses(first)) == [0, 1]
    at_step_2 = tmp_path / "step2.ckpt"
    shutil.copy(tmp_path / "checkpoints" / "last.ckpt", at_step_2)

    train(config("trainer.max_steps=4", "resume=must", *FAST), tmp_path)
    resumed = csv_rows(tmp_path)
    cells = logged_cells(resumed)
    assert len(cells) == len(set(cells)), cells
    assert sorted(losses(resumed)) == [0, 1, 2, 3]
    assert {s: v for s, v in losses(resumed).items() if s < 2} == losses(first)  # run 1's
    assert resumed[: len(first)] == first
    assert {s for s, name in cells if name == "val/miou_1pt"} == {1, 3}

    shutil.copy(at_step_2, tmp_path / "checkpoints" / "last.ckpt")
    train(config("trainer.max_steps=4", "resume=true", *FAST), tmp_path)
    again = csv_rows(tmp_path)
    cells = logged_cells(again)
    assert len(cells) == len(set(cells)), cells
    assert losses(again) == pytest.approx(losses(resumed), rel=1e-5)
    assert {s for s, name in cells if name == "val/miou_1pt"} == {1, 3}


def test_a_run_from_scratch_starts_a_new_csv_log(tmp_path):
    train(config("trainer.max_steps=2", *FAST), tmp_path)
    train(config("trainer.max_steps=1", "resume=false", *FAST), tmp_path)
    assert sorted(losses(csv_rows(tmp_path))) == [0]


# ---------------------------------------------------------------- missing paths, exit 2


def test_missing_data_paths_are_named_by_their_keys(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    annotations = tmp_path / "instances.json"
    annotations.write_text("{}")
    missing = tmp_path / "missing"
    coco = {"kind": "coco", "annotations": str(annotations), "images": str(images)}
    assert missing_paths(coco, {"annotations": str(annotations)}) == []
    assert missing_paths(None, None) == []  # the default synthetic data
    assert missing_paths({**coco, "images": str(missing)}, {"annotations": str(annotations)}) == [
        f"data.train.images={missing}: no such directory"  # the val spec inherits it: once
    ]
    assert missing_paths(coco, {"annotations": str(images), "images": str(annotations)}) == [
        f"data.val.annotations={images}: not a file",
        f"data.val.images={annotations}: not a directory",
    ]
    sa1b = {"kind": "sa1b", "roots": [str(images), str(missing)], "image_root": None}
    assert missing_paths(sa1b, {"roots": str(annotations)}) == [
        f"data.train.roots[1]={missing}: does not exist"
    ]


def test_a_missing_data_path_exits_2_with_one_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    annotations = tmp_path / "instances.json"
    annotations.write_text("{}")
    missing = tmp_path / "no" / "instances_train2017.json"
    result = run_command(
        "+exp=finetune_coco_vit_b",
        "model.type=vit_nano",
        "model.image_size=64",
        "model.checkpoint=null",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        f"data.train.annotations={missing}",
        f"data.train.images={images}",
        f"data.val.annotations={annotations}",
        f"data.val.images={images}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result) == [f"error: data.train.annotations={missing}: no such file"]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_checkpoint_path_stops_the_run(tmp_path):
    missing = tmp_path / "gone.ckpt"
    with pytest.raises(StartError) as refused:
        train(config(f"ckpt_path={missing}", f"model.checkpoint={tmp_path / 'sam.pth'}"), tmp_path)
    assert refused.value.lines == [
        f"model.checkpoint={tmp_path / 'sam.pth'}: no such file",
        f"ckpt_path={missing}: no such checkpoint file",
    ]
