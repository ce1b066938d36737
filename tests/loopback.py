"""Helpers for tests that run several processes on loopback (gloo), as many nodes would."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(port: int, node_rank: int, world_size: int) -> dict[str, str]:
    """The environment variables of one "node" of the env-var launch form."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "NODE_RANK": str(node_rank),
        "WORLD_SIZE": str(world_size),
    }


def start(command: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """Starts ``command`` in this repository with ``env`` added (one thread per process),
    its output and errors in one text stream."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """The exit status and output of a process from :func:`start`, once it ends."""
    log = process.communicate(timeout=timeout)[0]
    return process.returncode, log
