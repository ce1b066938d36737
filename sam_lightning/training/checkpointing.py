"""Training checkpoints: written atomically, read without executing pickles, a ``last``
checkpoint that really is the latest, and a CSV log that a resumed run continues.

Lightning's own ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when it also
writes a top-k checkpoint (Lightning 2.6), so after a validation that is not the best the
``last`` file is stale and a resumed run would repeat steps. :class:`SaveLast` writes it
whenever asked to. Lightning's ``TorchCheckpointIO`` writes a local file through a temporary
file in ``/tmp`` and ``shutil.move``, which is a copy (not atomic) across file systems;
:class:`AtomicCheckpointIO` writes next to the target and renames.

Lightning's ``CSVLogger`` starts a new ``version_<n>`` directory per run, so a resumed run's
log is split (and, with a fixed version, it deletes the previous ``metrics.csv``).
:class:`ContinuedCSVLogger` keeps one ``metrics.csv`` per run directory: a run that starts at
global step ``g`` keeps the rows of the steps before ``g`` and appends its own.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sam_lightning.file_io import atomic_path, write_atomic

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


#: The checkpoint entry holding the training modules' ``batches_seen`` (the data position).
POSITION_KEY = "sam_lightning_batches_seen"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The ``global_step`` of a Lightning checkpoint; its tensors are memory-mapped, not
    read."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("global_step", 0))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``torch.save`` atomically (:func:`~sam_lightning.file_io.atomic_path`: an
    interrupted save leaves the previous checkpoint intact); always
    loads with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as temporary, open(temporary, "xb") as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        return torch.load(path, map_location=map_location, weights_only=True)


class SaveLast(L.Callback):
    """Writes ``<dirpath>/last.ckpt`` after every validation, every ``every_n_steps``
    optimiser steps (0: never by count) and at the end of training."""

    def __init__(self, dirpath: str | os.PathLike[str], every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        # The full state (optimiser, loops, callbacks): what a resumed run needs.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        count_due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if count_due and step != self._saved_step:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Also when this step was saved already: the validation has updated the state.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` from ``start_step``: the
    rows of earlier steps are kept (with their columns), those of later ones dropped."""

    def __init__(self, log_dir: str, start_step: int) -> None:
        self.start_step = start_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's own deletes an existing metrics.csv
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if _step(row) < self.start_step]
            columns = sorted(reader.fieldnames or [])
        if not rows:
            path.unlink()
            return
        self.metrics_keys = columns  # save() appends, and rewrites when a new column comes
        text = _csv_text(columns, rows)
        write_atomic(path, text.encode())
        log.info("continuing %s from step %d (%d rows kept)", path, self.start_step, len(rows))


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")


def _csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class ContinuedCSVLogger(CSVLogger):
    """A ``CSVLogger`` with one log per ``save_dir``: ``<save_dir>/<name>/version_0/
    metrics.csv``, continued by a run that starts at global step ``start_step`` (a resumed
    run): the rows of earlier steps stay, those of ``start_step`` and later (steps that the
    checkpoint does not hold, to be logged again) are dropped, so no step is logged twice. A
    run from scratch (``start_step=0``) starts a new file."""

    def __init__(self, save_dir: str | os.PathLike[str], name: str = "csv", start_step: int = 0):
        super().__init__(save_dir, name=name, version=0)
        self.start_step = int(start_step)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.start_step)
        return self._experiment
