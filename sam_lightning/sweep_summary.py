"""``summary.csv`` and ``summary.md`` in the directory of a Hydra multirun of ``evaluate``:
one row per job with its overrides and metrics, for readers who do not use W&B's UI.

Rows are ordered as the paper's tables: by task in the order of §7 (points, edges,
proposals, instances, text), then by model (ViT-B, ViT-L, ViT-H, then others), then by job
number. ``summary.md`` has one table per task (its own metric columns); ``summary.csv`` has
every row, with the columns of all tasks. A job without ``metrics.json`` (failed, or not
run) is listed with the status ``no metrics``.

:class:`SweepSummary` is the Hydra callback (``hydra.callbacks`` in ``conf/evaluate.yaml``)
that writes them when a multirun ends, in the process that launched it, with any launcher
(basic, submitit_local, submitit_slurm). :func:`write_sweep_summary` does the work and can be
rerun on a sweep directory.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sam_lightning.file_io import write_atomic

#: Tasks in the order of the paper's §7 (and of ``sam_lightning.evaluate.TASKS``).
TASK_ORDER = (
    "points_coco", "points_lvis", "edges_bsds", "proposals_lvis",
    "instances_coco", "instances_lvis", "text_coco", "text_refcoco",
)  # fmt: skip
MODEL_ORDER = ("vit_t", "vit_tiny", "vit_nano", "vit_b", "vit_l", "vit_h")
CSV_NAME, MARKDOWN_NAME = "summary.csv", "summary.md"


@dataclass(frozen=True)
class JobRow:
    """One job of a sweep: its number, task, model, overrides and metrics (None: none)."""

    job: int
    task: str
    model: str
    overrides: tuple[str, ...]
    metrics: Mapping[str, float | None] | None

    @property
    def status(self) -> str:
        return "done" if self.metrics is not None else "no metrics"

    def sort_key(self) -> tuple[int, int, int]:
        task = TASK_ORDER.index(self.task) if self.task in TASK_ORDER else len(TASK_ORDER)
        model = MODEL_ORDER.index(self.model) if self.model in MODEL_ORDER else len(MODEL_ORDER)
        return task, model, self.job


def read_jobs(sweep_dir: str | os.PathLike[str]) -> list[JobRow]:
    """The jobs of ``sweep_dir`` (subdirectories with ``.hydra/config.yaml``), in the
    paper's order."""
    from omegaconf import OmegaConf

    rows = []
    for job_dir in Path(sweep_dir).iterdir():
        config_file = job_dir / ".hydra" / "config.yaml"
        if not job_dir.name.isdigit() or not config_file.is_file():
            continue
        config = OmegaConf.load(config_file)
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        rows.append(
            JobRow(
                int(job_dir.name),
                str(OmegaConf.select(config, "eval.task", default="?")),
                str(OmegaConf.select(config, "model.type", default="?")),
                tuple(str(item) for item in overrides),
                metrics,
            )
        )
    return sorted(rows, key=JobRow.sort_key)


def metric_names(rows: Sequence[JobRow]) -> list[str]:
    """The metrics of ``rows`` in the order their harnesses write them (first seen first)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.metrics or {}))
    return list(names)


def summary_csv(rows: Sequence[JobRow]) -> str:
    """Every row: job, task, model, status, overrides (space-separated), then the metrics."""
    names = metric_names(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job", "task", "model", "status", "overrides", *names])
    for row in rows:
        values = [_cell((row.metrics or {}).get(name)) for name in names]
        writer.writerow(
            [row.job, row.task, row.model, row.status, " ".join(row.overrides), *values]
        )
    return buffer.getvalue()


def summary_markdown(rows: Sequence[JobRow], title: str = "") -> str:
    """One Markdown table per task, rows in the paper's order, metrics to 4 decimals."""
    lines = [f"# {title}", ""] if title else []
    for task in dict.fromkeys(row.task for row in rows):
        group = [row for row in rows if row.task == task]
        names = metric_names(group)
        header = ["job", "model", "status", "overrides", *names]
        lines += [f"## {task}", "", _md_row(header), _md_row(["---"] * len(header))]
        for row in group:
            values = [_cell((row.metrics or {}).get(name), 4) for name in names]
            overrides = " ".join(f"`{item}`" for item in row.overrides)
            lines.append(_md_row([str(row.job), row.model, row.status, overrides, *values]))
        lines.append("")
    return "\n".join(lines)


def write_sweep_summary(sweep_dir: str | os.PathLike[str]) -> tuple[Path, Path] | None:
    """Writes ``summary.csv`` and ``summary.md`` in ``sweep_dir`` (atomically); returns their
    paths, or None when the directory holds no job."""
    sweep_dir = Path(sweep_dir)
    rows = read_jobs(sweep_dir) if sweep_dir.is_dir() else []
    if not rows:
        return None
    csv_path = write_atomic(sweep_dir / CSV_NAME, summary_csv(rows).encode())
    md_path = write_atomic(
        sweep_dir / MARKDOWN_NAME, summary_markdown(rows, sweep_dir.name).encode()
    )
    return csv_path, md_path


class SweepSummary(Callback):
    """Hydra callback: :func:`write_sweep_summary` of the sweep directory when a multirun
    ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import logging

        written = write_sweep_summary(str(config.hydra.sweep.dir))
        if written is not None:
            logging.getLogger("sam_lightning").info("sweep summary: %s, %s", *written)


def _cell(value: Any, digits: int | None = None) -> str:
    if value is None:
        return ""
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return repr(value) if isinstance(value, float) else str(value)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
