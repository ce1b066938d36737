"""Fixtures of the annotation tool's tests: a tiny SAM (vit_tiny at 64 px, random weights),
small generated images, tools over them and servers on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from sam_lightning.annotate.server import ServerThread
from sam_lightning.annotate.tool import AnnotationTool
from sam_lightning.modeling.build import build_sam


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A few flat-coloured rectangles on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height - 10), rng.integers(0, width - 10)
        image[y : y + rng.integers(8, 20), x : x + rng.integers(8, 24)] = rng.integers(0, 256, 3)
    return image


@pytest.fixture(scope="session")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("vit_tiny", image_size=64)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """images/: a.png 48x64, b.jpg 40x56, c.png 32x32 (and a text file)."""
    directory = tmp_path / "images"
    directory.mkdir()
    Image.fromarray(scene(48, 64, 0)).save(directory / "a.png")
    Image.fromarray(scene(40, 56, 1)).save(directory / "b.jpg", quality=95)
    Image.fromarray(scene(32, 32, 2)).save(directory / "c.png")
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.fixture
def make_tool(
    images: Path, tmp_path: Path, model: torch.nn.Module
) -> Callable[..., AnnotationTool]:
    """``make_tool(**options)``: an AnnotationTool over ``images`` writing to tmp/out."""

    def make(**options: Any) -> AnnotationTool:
        options.setdefault("annotator", "alice")
        options.setdefault("session", "s1")
        return AnnotationTool(images, tmp_path / "out", model, **options)

    return make


class Client:
    """``requests`` against a running server, with its base URL."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url, self.session = url, requests.Session()
        self.session.headers.update(headers or {})

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return self.session.post(self.url + path, timeout=60, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.delete(self.url + path, timeout=60, **kwargs)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[ServerThread, Client]]]:
    """``serve(tool, token=None)``: the tool served on a free port, and a client."""
    servers: list[ServerThread] = []

    def start(tool: AnnotationTool, token: str | None = None) -> tuple[ServerThread, Client]:
        server = ServerThread(tool, port=0, token=token).start()
        servers.append(server)
        return server, Client(server.url, {"X-Annotate-Token": token} if token else None)

    yield start
    for server in servers:
        server.stop()
