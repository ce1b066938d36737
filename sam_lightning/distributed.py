"""Dataset-scale runs on many devices and nodes: launching through Lightning Fabric, the
rank context the per-image loops use, and progress shared through files.

The inference commands split a list of items (images) across ranks: each rank takes every
N-th item of a list that rank 0 decides, so each item goes to exactly one rank and the split
is deterministic, balanced and without the padding duplicates of a ``DistributedSampler``.
The item loops contain no collectives (ranks finish their shards at different times); each
rank instead writes ``<dir>/rank<r>.json`` (:class:`RankProgress`) after every item, and
rank 0 reads them for one progress bar and waits on them at the end (:func:`wait_for_ranks`),
failing with the rank's name when one reports an error or goes silent for ``timeout_s``.
That directory must be on a file system every node sees, as the outputs are.

Why Fabric and not ``Trainer.predict``: these loops write files as they go, resume per item
and run the model on images of different sizes; Fabric gives Lightning's launchers (its own
processes on one machine, torchrun, SLURM, the MASTER_ADDR/NODE_RANK/WORLD_SIZE form) and
cluster environments without a LightningModule around a loop that is not a training step.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sam_lightning.file_io import write_atomic

if TYPE_CHECKING:
    from lightning.fabric import Fabric

log = logging.getLogger("sam_lightning")
T = TypeVar("T")


class LaunchError(RuntimeError):
    """A job that cannot start on the requested devices."""


class RankError(RuntimeError):
    """Another rank of a running job failed or went silent."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a job: its rank, the world size, and the one collective
    the commands use, before their loops (the identity in one process)."""

    rank: int = 0
    world_size: int = 1
    all_gather: Callable[[Any], list[Any]] = lambda value: [value]

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th one, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])


#: The one process of a job that is not distributed.
SINGLE_PROCESS = Ranks()


def fabric_devices(device: str, accelerator: str, devices: int) -> tuple[str, int | list[int]]:
    """Fabric's ``accelerator`` and ``devices`` for the one-device setting ``device``
    (``auto``, ``cpu``, ``cuda``, ``cuda:1``) together with the launch keys: a named device
    wins when the launch keys are left at ``auto`` and 1 device."""
    if device == "auto":
        return accelerator, devices
    kind, _, index = device.partition(":")
    if devices != 1 or accelerator not in ("auto", kind, "gpu" if kind == "cuda" else kind):
        raise LaunchError(
            f"device={device} names one device, but accelerator={accelerator} "
            f"devices={devices} ask for others: set either device or accelerator/devices"
        )
    return kind, [int(index)] if index else 1


def check_world_size(devices: int, num_nodes: int, environ: dict[str, str] | None = None) -> None:
    """With ranks given as environment variables (MASTER_ADDR, NODE_RANK, WORLD_SIZE, as
    training documents), WORLD_SIZE must be ``num_nodes * devices``; Lightning's own
    environments do not check it."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ or "TORCHELASTIC_RUN_ID" in environ:
        return  # torchrun's environment is checked by Lightning
    try:
        world_size = int(environ["WORLD_SIZE"])
    except ValueError:
        raise LaunchError(f"WORLD_SIZE={environ['WORLD_SIZE']!r} is not a number") from None
    if world_size != num_nodes * devices:
        raise LaunchError(
            f"WORLD_SIZE={world_size} does not match num_nodes={num_nodes} x devices={devices}"
            f" = {num_nodes * devices}: set num_nodes and devices (processes per node) so that"
            " their product is the number of processes"
        )


def export_submitit_local_ranks(environ: dict[str, str] | None = None) -> bool:
    """In a task of a submitit *local* job of several tasks, sets the env-var form that
    Lightning reads (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, LOCAL_RANK, NODE_RANK) from
    submitit's job environment, so the tasks become the job's ranks; returns whether it did.
    On SLURM nothing is needed: Lightning reads SLURM's own variables."""
    environ = os.environ if environ is None else environ
    if environ.get("SUBMITIT_EXECUTOR") != "local" or "LOCAL_RANK" in environ:
        return False
    if int(environ.get("SUBMITIT_LOCAL_NTASKS", "1")) <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    ranks = TorchDistributedEnvironment()
    environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(ranks.master_port),
        WORLD_SIZE=str(ranks.world_size),
        LOCAL_RANK=str(ranks.local_rank),
        NODE_RANK="0",
    )
    return True


def launch_fabric(
    device: str = "auto",
    accelerator: str = "auto",
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    timeout_s: float = 1800.0,
) -> Fabric:
    """A launched :class:`~lightning.fabric.Fabric`: with ``devices > 1`` on one machine it
    starts the other processes (re-running the command line); every collective times out
    after ``timeout_s``. Raises :class:`LaunchError` when the job cannot start."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    accelerator, fabric_device_list = fabric_devices(device, accelerator, devices)
    export_submitit_local_ranks()
    check_world_size(devices, num_nodes)
    several = devices * num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    chosen: Any = strategy
    if several:
        chosen = DDPStrategy(start_method="popen", timeout=timedelta(seconds=timeout_s))
    fabric = Fabric(
        accelerator=accelerator,
        devices=fabric_device_list,
        num_nodes=num_nodes,
        strategy=chosen,
        precision=precision,  # type: ignore[arg-type]
    )
    try:
        fabric.launch()
    except (RuntimeError, TimeoutError) as error:  # torch.distributed's store errors
        address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT')}"
        raise LaunchError(
            f"rank {fabric.global_rank} could not join the job at MASTER_ADDR:MASTER_PORT="
            f"{address} within timeout_s={timeout_s:g} s: {' '.join(str(error).split())[:300]}"
        ) from None
    return fabric


def fabric_ranks(fabric: Fabric) -> Ranks:
    """The :class:`Ranks` of a launched Fabric (collectives through torch.distributed)."""
    if fabric.world_size == 1:
        return Ranks()
    import torch.distributed as dist

    def all_gather(value: Any) -> list[Any]:
        gathered: list[Any] = [None] * fabric.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    return Ranks(fabric.global_rank, fabric.world_size, all_gather)


def new_run_id() -> str:
    """An id that tells this run's progress files from those of an earlier run."""
    return uuid.uuid4().hex


class RankProgress:
    """``<directory>/rank<r>.json``: this rank's counts, written atomically after an item at
    most every ``interval`` seconds, always when it finishes or fails."""

    def __init__(
        self, directory: Path, run_id: str, ranks: Ranks, total: int, interval: float = 1.0
    ) -> None:
        self.directory, self.run_id, self.ranks = Path(directory), run_id, ranks
        self.path = self.directory / f"rank{ranks.rank}.json"
        self.state: dict[str, Any] = {
            "run": run_id,
            "rank": ranks.rank,
            "total": total,
            "done": 0,
            "finished": False,
            "error": None,
        }
        self.interval, self._written = interval, 0.0
        self._others_done, self._others_read = 0, 0.0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write()

    def advance(self, counts: dict[str, Any]) -> None:
        self.state["done"] += 1
        self.state["counts"] = counts
        if time.monotonic() - self._written >= self.interval:
            self._write()

    def finish(self, counts: dict[str, Any], error: str | None = None) -> None:
        self.state.update(counts=counts, finished=error is None, error=error)
        self._write()

    def done_everywhere(self) -> int:
        """Items done by every rank so far (on rank 0; the others know only their own),
        reading the other ranks' files at most every ``interval`` seconds."""
        if self.ranks.world_size > 1 and self.ranks.is_zero:
            if time.monotonic() - self._others_read >= self.interval:
                self._others_read = time.monotonic()
                states = read_ranks(self.directory, self.run_id, self.ranks.world_size)
                self._others_done = sum(s["done"] for rank, s in states.items() if rank)
            return self.state["done"] + self._others_done
        return self.state["done"]

    def _write(self) -> None:
        self._written = time.monotonic()
        write_atomic(self.path, json.dumps(self.state).encode())


def read_ranks(directory: Path, run_id: str, world_size: int) -> dict[int, dict[str, Any]]:
    """The progress files of this run that exist and parse, by rank."""
    states = {}
    for rank in range(world_size):
        try:
            state = json.loads((Path(directory) / f"rank{rank}.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("run") == run_id:
            states[rank] = state
    return states


def wait_for_ranks(
    directory: Path,
    run_id: str,
    world_size: int,
    timeout_s: float,
    on_progress: Callable[[int], None] = lambda done: None,
    poll_s: float = 0.5,
) -> dict[int, dict[str, Any]]:
    """Rank 0's wait for the others: returns every rank's final state once all have
    finished, calling ``on_progress(items done by all ranks)`` as they go. Raises
    :class:`RankError` naming a rank that reported an error or whose file did not change
    for ``timeout_s``."""
    seen: dict[int, tuple[Any, float]] = {}
    while True:
        states = read_ranks(directory, run_id, world_size)
        now = time.monotonic()
        for rank in range(world_size):
            state = states.get(rank)
            if state is not None and state.get("error"):
                raise RankError(f"rank {rank} failed: {state['error']}")
            key = None if state is None else (state["done"], state["finished"])
            if rank not in seen or seen[rank][0] != key:
                seen[rank] = (key, now)
            elif now - seen[rank][1] > timeout_s and not (key and key[1]):
                what = "never started" if key is None else f"stopped after {key[0]} items"
                raise RankError(
                    f"rank {rank} {what}: nothing from it for timeout_s={timeout_s:g} s "
                    f"({directory / f'rank{rank}.json'}); it has probably died"
                )
        on_progress(sum(state["done"] for state in states.values()))
        if len(states) == world_size and all(s["finished"] for s in states.values()):
            return states
        time.sleep(poll_s)
