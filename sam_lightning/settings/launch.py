"""How the dataset-scale commands (``amg``, and ``evaluate`` later) are spread over devices
and nodes: Lightning's own keys with Lightning's meanings (``conf/launch/default.yaml``,
stated at the top level of the command's config: ``devices=2 accelerator=cpu``)."""

from __future__ import annotations

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


def launch_problems(devices: Any, num_nodes: Any, num_workers: Any, timeout_s: Any) -> list[str]:
    """Values of the declared types that still cannot launch a job, one line each (values
    not known before the run, such as interpolations, are left alone)."""
    bounds = [
        ("devices", devices, 1, "must be at least 1 (processes per node)"),
        ("num_nodes", num_nodes, 1, "must be at least 1"),
        ("num_workers", num_workers, 0, "must be 0 (read in the main process) or more"),
        ("timeout_s", timeout_s, 1e-9, "must be positive (seconds)"),
    ]
    return [
        f"{key}={value}: {rule}"
        for key, value, lowest, rule in bounds
        if isinstance(value, int | float) and not isinstance(value, bool) and value < lowest
    ]
