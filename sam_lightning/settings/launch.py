"""How the dataset-scale commands (``amg``, and ``evaluate`` later) are spread over devices
and nodes: Lightning's own keys with Lightning's meanings (``conf/launch/default.yaml``,
stated at the top level of the command's config: ``devices=2 accelerator=cpu``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from sam_lightning.settings.schema import Choices

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp")


@dataclass(kw_only=True)
class LaunchSettings:
    """Lightning Fabric's launch arguments, and what the launched job needs besides."""

    # cpu, gpu (= cuda), mps or auto; ``device=cuda:1`` still names one device
    accelerator: Annotated[str, Choices(ACCELERATORS)] = "auto"
    devices: int = 1  # processes per node (>= 1); with devices > 1 the command starts them
    num_nodes: int = 1  # with torchrun, SLURM or MASTER_ADDR/NODE_RANK/WORLD_SIZE
    strategy: Annotated[str, Choices(STRATEGIES)] = "auto"  # ddp whenever there are ranks
    precision: str = "32-true"  # Lightning's precision, e.g. bf16-mixed on GPUs
    num_workers: int = 2  # DataLoader processes per rank that read and decode the images
    timeout_s: float = 1800.0  # the longest wait for another rank (collectives, progress)


def launch_problems(config: Mapping[str, Any], **at_least_one: str) -> list[str]:
    """Values of the declared types in a command's ``config`` that still cannot launch a job,
    one line each: the launch keys, and the command's keys in ``at_least_one`` (key -> what
    it counts) that must be at least 1. Values not known before the run, such as
    interpolations, are left alone."""
    bounds = [
        ("devices", 1, "must be at least 1 (processes per node)"),
        ("num_nodes", 1, "must be at least 1"),
        ("num_workers", 0, "must be 0 (read in the main process) or more"),
        ("timeout_s", 1e-9, "must be positive (seconds)"),
        *((key, 1, f"must be at least 1 ({what})") for key, what in at_least_one.items()),
    ]
    return [
        f"{key}={config.get(key)}: {rule}"
        for key, lowest, rule in bounds
        if _is_number(config.get(key)) and config.get(key) < lowest
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
