"""The per-image loop of the harnesses (:mod:`sam_lightning.evaluation.item_map`) in one
process: values in item order through their committed chunks, resume computing only what no
chunk holds, refusal to overwrite an unfinished run or to resume one of other settings, and
DataLoader workers giving the same values. Many ranks: test_evaluate_distributed.py."""

from __future__ import annotations

import json

import pytest

from sam_lightning.distributed import Ranks
from sam_lightning.evaluation.item_map import (
    InProcess,
    ResumeError,
    ShardedItemMap,
    read_parts,
)


def square(index: int, loaded: int) -> dict:
    return {"index": index, "value": loaded * loaded + 0.1}


def load(index: int) -> int:
    return 3 * index


class Interrupt(Exception):
    pass


def failing_after(count: int, calls: list[int]):
    def compute(index: int, loaded: int) -> dict:
        if len(calls) == count:
            raise Interrupt("stopped")
        calls.append(index)
        return square(index, loaded)

    return compute


def test_in_process_gives_the_values_in_order():
    assert InProcess(False)(4, square, load) == [square(i, 3 * i) for i in range(4)]
    assert InProcess(False)(2, lambda i, x: x) == [0, 1]


def test_the_sharded_map_commits_chunks_and_returns_the_values(tmp_path):
    items = ShardedItemMap(tmp_path, {"task": "t"}, commit_every=3, progress=False)
    assert items(7, square, load) == InProcess(False)(7, square, load)
    parts = sorted((tmp_path / "_progress" / "parts").glob("*.json"))
    assert [len(json.loads(p.read_text())) for p in parts] == [3, 3, 1]
    manifest = json.loads((tmp_path / "_progress" / "manifest.json").read_text())
    assert manifest.pop("seconds") >= 0
    assert manifest == {"manifest": {"task": "t"}, "items": 7, "complete": True, "computed": 7}


def test_an_interrupted_run_resumes_with_only_the_items_left(tmp_path):
    calls: list[int] = []
    first = ShardedItemMap(tmp_path, {"task": "t"}, commit_every=2, progress=False)
    with pytest.raises(Interrupt):
        first(7, failing_after(5, calls), load)
    assert calls == [0, 1, 2, 3, 4]
    assert sorted(read_parts(tmp_path / "_progress" / "parts")) == [0, 1, 2, 3, 4]  # all kept
    with pytest.raises(ResumeError, match="unfinished run: resume=true continues it"):
        ShardedItemMap(tmp_path, {"task": "t"}, progress=False)(7, square, load)
    again: list[int] = []
    resumed = ShardedItemMap(tmp_path, {"task": "t"}, resume=True, progress=False)
    assert resumed(7, failing_after(99, again), load) == InProcess(False)(7, square, load)
    assert again == [5, 6]


def test_a_resume_with_other_settings_is_refused(tmp_path):
    with pytest.raises(Interrupt):
        ShardedItemMap(tmp_path, {"task": "t", "eval": {"n": 1}}, progress=False)(
            3, failing_after(1, []), load
        )
    other = ShardedItemMap(tmp_path, {"task": "t", "eval": {"n": 2}}, resume=True)
    with pytest.raises(ResumeError, match=r"other settings \(differ: manifest.eval.n\)"):
        other(3, square, load)
    with pytest.raises(ResumeError, match=r"differ: items"):
        ShardedItemMap(tmp_path, {"task": "t", "eval": {"n": 1}}, resume=True)(4, square, load)


def test_a_finished_run_is_redone_without_resume_and_kept_with_it(tmp_path):
    ShardedItemMap(tmp_path, {"task": "t"}, progress=False)(3, square, load)
    calls: list[int] = []
    kept = ShardedItemMap(tmp_path, {"task": "t"}, resume=True, progress=False)
    assert kept(3, failing_after(9, calls), load) == InProcess(False)(3, square, load)
    assert calls == []
    redone = ShardedItemMap(tmp_path, {"task": "t"}, progress=False)
    assert redone(3, failing_after(9, calls), load) == InProcess(False)(3, square, load)
    assert calls == [0, 1, 2]


def test_values_come_back_as_json_gives_them(tmp_path):
    values = ShardedItemMap(tmp_path, {}, progress=False)(2, lambda i, x: (i, {1: 0.1 + i}))
    assert values == [[0, {"1": 0.1}], [1, {"1": 1.1}]]


def test_workers_load_the_same_items(tmp_path):
    items = ShardedItemMap(tmp_path, {}, num_workers=2, progress=False)
    assert items(5, square, load) == InProcess(False)(5, square, load)


def test_a_missing_chunk_is_reported(tmp_path):
    ShardedItemMap(tmp_path, {}, commit_every=1, progress=False)(3, square, load)
    next((tmp_path / "_progress" / "parts").glob("*-000001.json")).unlink()
    manifest = tmp_path / "_progress" / "manifest.json"
    manifest.write_text(manifest.read_text().replace("true", "false"))
    calls: list[int] = []
    resumed = ShardedItemMap(tmp_path, {}, resume=True, progress=False)
    assert resumed(3, failing_after(9, calls), load) == InProcess(False)(3, square, load)
    assert calls == [1]  # recomputed, not lost


def test_an_unreadable_chunk_names_its_file(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "x-r0-000000.json").write_text("[[0, ")
    with pytest.raises(ResumeError, match="x-r0-000000.json: not a readable chunk"):
        read_parts(parts)


def test_this_rank_takes_every_nth_pending_item(tmp_path):
    """Rank 1 of 2 (the collective answered as rank 0 would): items 1, 3, 5 and no values."""
    plan = ShardedItemMap(tmp_path / "zero", {}, progress=False)._plan(6)

    def all_gather(value):
        return [plan, value]

    calls: list[int] = []
    ranks = Ranks(1, 2, all_gather)
    items = ShardedItemMap(tmp_path / "zero", {}, ranks=ranks, progress=False)
    assert items(6, failing_after(9, calls), load) is None
    assert calls == [1, 3, 5]
    assert sorted(read_parts(tmp_path / "zero" / "_progress" / "parts")) == [1, 3, 5]
