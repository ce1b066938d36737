"""The per-image loop of every harness, in one process or spread over ranks, resumable.

A harness hands its images to an :data:`ItemMap` as ``count`` items: ``load(i)`` reads item
``i`` (in DataLoader worker processes when ``num_workers > 0``, so it must pickle), and
``compute(i, loaded)`` returns its JSON-serialisable value (e.g. the item's result records).
The map returns the ``count`` values in item order, on rank 0; other ranks get None.

:func:`map_in_process` runs the items one after another. :class:`ShardedItemMap` gives each
rank every N-th item still to do (rank 0 decides and broadcasts the list), commits each
rank's values atomically in chunks of ``commit_every`` items under
``<output_dir>/_progress/parts/``, shows one progress bar over all ranks on rank 0 (from the
ranks' progress files: no collective inside the loop), waits for the other ranks with a
bounded silence, and reads the values back on rank 0. Values always go through their JSON
chunks, so one process and many give the same values, bit for bit, and a rerun with
``resume=True`` computes only the items no chunk holds, at any world size. A manifest
(``_progress/manifest.json``) records what the items are (task, settings, data, model); a
resume with a different one is refused, as it would mix results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sam_lightning.distributed import (
    SINGLE_PROCESS,
    RankProgress,
    Ranks,
    new_run_id,
    wait_for_ranks,
)
from sam_lightning.file_io import remove_temp_files, write_atomic

log = logging.getLogger("sam_lightning.evaluation")

PROGRESS_DIR = "_progress"
Load = Callable[[int], Any]
Compute = Callable[[int, Any], Any]


class ResumeError(ValueError):
    """A run directory whose saved predictions cannot be continued or would be lost."""


class ItemMap(Protocol):
    """``(count, compute, load, desc) -> values in item order`` (None on ranks but 0)."""

    def __call__(
        self, count: int, compute: Compute, load: Load | None = None, desc: str = "images"
    ) -> list[Any] | None: ...


def identity(index: int) -> int:
    """The default ``load``: the item is its index."""
    return index


@dataclass(frozen=True)
class InProcess:
    """:data:`ItemMap` of one process, nothing saved: ``compute(i, load(i))`` for each item,
    with a tqdm bar when ``progress``."""

    progress: bool = True

    def __call__(
        self, count: int, compute: Compute, load: Load | None = None, desc: str = "images"
    ) -> list[Any]:
        load = load or identity
        bar = tqdm(range(count), desc, unit="img", disable=not self.progress)
        with logging_redirect_tqdm(), bar:
            return [compute(index, load(index)) for index in bar]


map_in_process = InProcess()


@dataclass(frozen=True)
class ShardedItemMap:
    """:data:`ItemMap` over ``ranks``, committed in chunks under ``output_dir`` (module
    docstring).

    Attributes:
        output_dir: the run directory, on a file system every rank sees.
        manifest: what the items are; a resumed run must have the same.
        ranks: this process's place in the job.
        resume: continue from the chunks of an earlier run instead of refusing to start.
        commit_every: items per committed chunk (a ``kill -9`` loses at most this many per
            rank).
        num_workers: DataLoader processes that run ``load``.
        timeout_s: the longest silence of another rank before rank 0 fails naming it.
        progress: rank 0's progress bar.
        autocast: the context ``compute`` runs in (e.g. Fabric's precision).
    """

    output_dir: Path
    manifest: Mapping[str, Any]
    ranks: Ranks = SINGLE_PROCESS
    resume: bool = False
    commit_every: int = 16
    num_workers: int = 0
    timeout_s: float = 1800.0
    progress: bool = True
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = field(
        default=contextlib.nullcontext
    )

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) / PROGRESS_DIR

    def __call__(
        self, count: int, compute: Compute, load: Load | None = None, desc: str = "images"
    ) -> list[Any] | None:
        decision = self.ranks.all_gather(self._plan(count) if self.ranks.is_zero else None)[0]
        if "error" in decision:  # every rank stops with rank 0's reason
            raise ResumeError(decision["error"])
        pending, run_id = decision["pending"], decision["run"]
        mine = self.ranks.shard(pending)
        chunks = _Chunks(self.directory / "parts", run_id, self.ranks.rank, self.commit_every)
        tracker = RankProgress(self.directory / "ranks", run_id, self.ranks, total=len(mine))
        start = time.perf_counter()
        show = self.progress and self.ranks.is_zero
        bar = tqdm(total=len(pending), desc=desc, unit="img", disable=not show)
        try:
            with logging_redirect_tqdm(), bar:
                for index, loaded in zip(mine, _loaded(mine, load or identity, self.num_workers)):
                    with self.autocast():
                        chunks.add(index, compute(index, loaded))
                    tracker.advance({})
                    bar.n = tracker.done_everywhere()
                    bar.refresh()
                chunks.commit()
                tracker.finish({})
                if self.ranks.is_zero and self.ranks.world_size > 1:

                    def show_done(done: int) -> None:
                        bar.n = done
                        bar.refresh()

                    wait_for_ranks(
                        tracker.directory,
                        run_id,
                        self.ranks.world_size,
                        self.timeout_s,
                        on_progress=show_done,
                    )
        except BaseException as error:
            chunks.commit()  # what is finished stays: a rerun with resume=true continues
            tracker.finish({}, error=f"{type(error).__name__}: {error}")
            raise
        if not self.ranks.is_zero:
            return None
        values = read_parts(self.directory / "parts")
        missing = [index for index in range(count) if index not in values]
        if missing:
            raise ResumeError(
                f"{len(missing)} of {count} items have no saved predictions in "
                f"{self.directory / 'parts'} (first: item {missing[0]}); was a file removed?"
            )
        seconds = time.perf_counter() - start
        self._write_manifest(count, complete=True, seconds=seconds, computed=len(pending))
        log.info("%s: %d of %d images computed in %.1f s", desc, len(pending), count, seconds)
        return [values[index] for index in range(count)]

    def _plan(self, count: int) -> dict[str, Any]:
        """Rank 0: the items still to do and the run id, or the reason not to start."""
        manifest = {"manifest": _plain(self.manifest), "items": count}
        saved = _read_manifest(self.directory)
        if saved is not None and not self.resume and not saved.get("complete"):
            return {
                "error": f"{self.output_dir} holds predictions of an unfinished run: "
                "resume=true continues it; to start over, delete "
                f"{self.directory} or choose another run_name"
            }
        if saved is not None and self.resume:
            saved_manifest = {key: saved.get(key) for key in manifest}
            if saved_manifest != manifest:
                changed = sorted(_differences(saved_manifest, manifest))
                return {
                    "error": f"resume=true, but {self.output_dir} holds predictions of "
                    f"other settings (differ: {', '.join(changed)}); use another run_name "
                    "or the settings of that run"
                }
        if saved is None or not self.resume:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.directory / "parts")
        shutil.rmtree(self.directory / "ranks", ignore_errors=True)
        done = set(read_parts(self.directory / "parts"))
        if done:
            log.info(
                "resuming: %d of %d items already done in %s", len(done), count, self.directory
            )
        self._write_manifest(count, complete=False)
        return {"pending": [i for i in range(count) if i not in done], "run": new_run_id()}

    def _write_manifest(self, count: int, complete: bool, **timing: float) -> None:
        """``manifest.json``; a finished run adds ``seconds`` (its loop, the wait for the
        other ranks included) and ``computed`` (items computed by this run)."""
        document = {
            "manifest": _plain(self.manifest),
            "items": count,
            "complete": complete,
            **timing,
        }
        write_atomic(self.directory / "manifest.json", json.dumps(document, indent=1).encode())


class _Chunks:
    """One rank's values, committed as ``<run>-r<rank>-<n>.json`` every ``every`` items."""

    def __init__(self, directory: Path, run_id: str, rank: int, every: int) -> None:
        self.directory, self.prefix, self.every = directory, f"{run_id}-r{rank}", max(1, every)
        self.pending: list[list[Any]] = []
        self.number = 0
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, index: int, value: Any) -> None:
        self.pending.append([index, value])
        if len(self.pending) >= self.every:
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        path = self.directory / f"{self.prefix}-{self.number:06d}.json"
        write_atomic(path, json.dumps(self.pending).encode())
        self.pending, self.number = [], self.number + 1


def read_parts(directory: Path) -> dict[int, Any]:
    """The values of every committed chunk in ``directory``, by item index."""
    values: dict[int, Any] = {}
    for path in sorted(Path(directory).glob("*-r*-*.json")):
        try:
            pairs = json.loads(path.read_bytes())
        except ValueError as error:
            raise ResumeError(f"{path}: not a readable chunk of predictions ({error})") from None
        values.update((int(index), value) for index, value in pairs)
    return values


def _loaded(indices: Sequence[int], load: Load, num_workers: int) -> Any:
    """``load(i)`` for ``indices`` in order, in ``num_workers`` DataLoader processes."""
    if num_workers == 0 or not indices:
        return (load(index) for index in indices)
    from torch.utils.data import DataLoader

    from sam_lightning.data.image_folder import as_is

    return DataLoader(
        _Items(list(indices), load),
        batch_size=None,
        collate_fn=as_is,
        num_workers=num_workers,
        prefetch_factor=2,
    )


class _Items:
    """A map-style dataset of ``load(indices[k])``."""

    def __init__(self, indices: list[int], load: Load) -> None:
        self.indices, self.load = indices, load

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        return self.load(self.indices[k])


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return None


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, default=str))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = dict.fromkeys([*old, *new])
        found: list[str] = []
        for key in keys:
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [prefix.rstrip(".") or "(all)"]
