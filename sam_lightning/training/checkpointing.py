"""Training checkpoints: written atomically, read without executing pickles, and a ``last``
checkpoint that really is the latest.

Lightning's own ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when it also
writes a top-k checkpoint (Lightning 2.6), so after a validation that is not the best the
``last`` file is stale and a resumed run would repeat steps. :class:`SaveLast` writes it
whenever asked to. Lightning's ``TorchCheckpointIO`` writes a local file through a temporary
file in ``/tmp`` and ``shutil.move``, which is a copy (not atomic) across file systems;
:class:`AtomicCheckpointIO` writes next to the target and renames.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sam_lightning.file_io import atomic_path

LAST_CHECKPOINT = "last.ckpt"


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
        trainer.save_checkpoint(self.path)
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
