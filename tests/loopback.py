"""Helpers for tests that run several processes on loopback (gloo), as many nodes would."""

from __future__ import annotations

import socket


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
