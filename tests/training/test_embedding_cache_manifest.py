"""The manifest of the embedding cache: what it holds, staleness by fingerprint, dtype and
format, corrupt manifests named, and creation when several threads or file systems without
hard links open a new directory."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import torch

from sam_lightning.file_io import write_if_absent
from sam_lightning.training import embedding_cache
from sam_lightning.training.embedding_cache import (
    EmbeddingCache,
    StaleCacheError,
)

# ------------------------------------------------------------------------------ manifest


def test_manifest_holds_the_format_fingerprint_dtype_and_description(tmp_path):
    EmbeddingCache(
        tmp_path / "cache",
        "f" * 64,
        dtype=torch.bfloat16,
        description={"model_type": "vit_tiny", "image_size": 64},
    )
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest == {
        "format": embedding_cache.FORMAT_VERSION,
        "fingerprint": "f" * 64,
        "dtype": "bfloat16",
        "description": {"model_type": "vit_tiny", "image_size": 64},
    }
    # The description is for people: another one opens the same cache.
    EmbeddingCache(tmp_path / "cache", "f" * 64, dtype=torch.bfloat16, description={"x": 1})


@pytest.mark.parametrize(
    ("field", "first", "second", "cached", "current"),
    [
        ("fingerprint", ("a" * 64, torch.float32), ("b" * 64, torch.float32), "a" * 64, "b" * 64),
        ("dtype", ("a" * 64, torch.float32), ("a" * 64, torch.float16), "float32", "float16"),
    ],
)
def test_reopening_with_another_fingerprint_or_dtype_is_stale(
    tmp_path, field, first, second, cached, current
):
    EmbeddingCache(tmp_path, first[0], dtype=first[1])
    with pytest.raises(StaleCacheError) as error:
        EmbeddingCache(tmp_path, second[0], dtype=second[1])
    assert (error.value.field, error.value.cached, error.value.current) == (field, cached, current)
    message = str(error.value)
    for part in (str(tmp_path), f"its {field} is", cached, current, "delete the directory"):
        assert part in message
    assert "training.embedding_cache" in message


def test_another_format_version_is_stale(tmp_path):
    EmbeddingCache(tmp_path, "a" * 64)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 0}))
    with pytest.raises(StaleCacheError, match="its format is 0") as error:
        EmbeddingCache(tmp_path, "a" * 64)
    assert error.value.field == "format"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not valid JSON"),
        (b'{"format": 1, "fingerp', "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"format": 1, "dtype": "float32", "description": {}}', "fingerprint=None"),
        (None, "cannot be read"),  # a directory where the file should be
    ],
    ids=["empty", "truncated", "list", "no-fingerprint", "unreadable"],
)
def test_corrupt_or_unreadable_manifest_names_the_file(tmp_path, monkeypatch, content, problem):
    monkeypatch.setattr(embedding_cache, "_MANIFEST_READ_TRIES", 1)
    path = tmp_path / "manifest.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(problem)) as error:
        EmbeddingCache(tmp_path, "a" * 64)
    assert not isinstance(error.value, StaleCacheError)
    assert f"embedding cache manifest {path}" in str(error.value)


def test_manifest_is_created_only_if_absent(tmp_path):
    path = tmp_path / "manifest.json"
    write_if_absent(path, b'{"first": 1}')
    write_if_absent(path, b'{"second": 2}')
    assert path.read_bytes() == b'{"first": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_threads_opening_a_new_directory_agree_on_one_manifest(tmp_path, monkeypatch):
    """Half the openers have another fingerprint: exactly those of the losing fingerprint
    fail, whichever wins, and no temporary file is left. A slow fsync lets every thread
    find the directory new."""
    fsync = embedding_cache.os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.02)
        fsync(fd)

    monkeypatch.setattr(embedding_cache.os, "fsync", slow_fsync)
    root, count = tmp_path / "cache", 12
    barrier = threading.Barrier(count)
    outcome: dict[int, str] = {}

    def open_cache(index: int) -> None:
        barrier.wait()
        try:
            EmbeddingCache(root, "ab"[index % 2] * 64)
            outcome[index] = "opened"
        except StaleCacheError:
            outcome[index] = "stale"

    threads = [threading.Thread(target=open_cache, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = json.loads((root / "manifest.json").read_text())["fingerprint"][0]
    assert outcome == {i: "opened" if "ab"[i % 2] == winner else "stale" for i in range(count)}
    assert [p.name for p in root.iterdir()] == ["manifest.json"]


def test_manifest_without_hard_links(tmp_path, monkeypatch):
    def no_link(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(embedding_cache.os, "link", no_link)
    EmbeddingCache(tmp_path, "a" * 64)
    assert json.loads((tmp_path / "manifest.json").read_text())["fingerprint"] == "a" * 64
    with pytest.raises(StaleCacheError):
        EmbeddingCache(tmp_path, "b" * 64)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
