"""What a run of ``python -m sam_lightning.amg`` did (:class:`AmgSummary`, written as
``<output>/_summary.json``): the counts each rank reports, merged on rank 0, and logged."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_lightning.data.sa1b import SUMMARY_NAME

if TYPE_CHECKING:
    from sam_lightning.data.image_folder import ImageJob

log = logging.getLogger("sam_lightning.amg")


@dataclass
class AmgSummary:
    """Counts of one run over all ranks; ``failed`` lists ``{"image": path, "error":
    reason}`` in input order."""

    input: str
    output: str
    image_root: str  # what image.file_name is relative to: SA1BDataset(image_root=...)
    images: int = 0
    written: int = 0
    skipped: int = 0  # done by an earlier run
    masks: int = 0  # in the files written by this run
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    completed: bool = False  # False if the run was interrupted
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def counts(summary: AmgSummary) -> dict[str, Any]:
    """What a rank reports of its work in its progress file."""
    return {"written": summary.written, "masks": summary.masks, "failed": summary.failed}


def show_progress(bar: Any, summary: AmgSummary, done: int) -> None:
    """Rank 0's bar: images done by all ranks (masks and failures of one process only)."""
    bar.n = done
    if summary.world_size == 1:
        bar.set_postfix(masks=summary.masks, failed=len(summary.failed), refresh=False)
    bar.refresh()


def merge_ranks(
    summary: AmgSummary, states: dict[int, dict[str, Any]], jobs: list[ImageJob]
) -> None:
    """Adds the other ranks' final counts to rank 0's ``summary``, failures in input order."""
    order = {str(job.path): i for i, job in enumerate(jobs)}
    for rank, state in sorted(states.items()):
        if rank == 0:
            continue
        counts = state["counts"]
        summary.written += counts["written"]
        summary.masks += counts["masks"]
        summary.failed += counts["failed"]
    summary.failed.sort(key=lambda failure: order.get(failure["image"], -1))


def log_summary(summary: AmgSummary) -> None:
    """Logs the job's counts, and each skipped image with its reason."""
    status = "done" if summary.completed else "interrupted"
    log.info(
        "%s: %d images, %d written (%d masks), %d already done, %d failed, %.1f s; summary in %s",
        status,
        summary.images,
        summary.written,
        summary.masks,
        summary.skipped,
        len(summary.failed),
        summary.seconds,
        Path(summary.output) / SUMMARY_NAME,
    )
    if summary.failed:
        log.error(
            "%d image(s) skipped (unreadable, too large, or refused by the generator):\n  %s",
            len(summary.failed),
            "\n  ".join(f"{f['image']}: {f['error']}" for f in summary.failed),
        )
