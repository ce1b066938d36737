"""The pieces of sam_lightning.distributed that need no second process: the split, the
launch checks, and rank 0's wait on the progress files."""

from __future__ import annotations

import json
import threading
import time

import pytest

from sam_lightning.distributed import (
    LaunchError,
    RankError,
    RankProgress,
    Ranks,
    check_world_size,
    fabric_devices,
    read_ranks,
    wait_for_ranks,
)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 7, 12])
def test_each_item_goes_to_exactly_one_rank(world_size, count):
    shards = [Ranks(rank, world_size).shard(list(range(count))) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(count))  # no padding
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


def test_one_process_collectives_are_the_identity():
    ranks = Ranks()
    assert ranks.is_zero and ranks.all_gather("x") == ["x"]


@pytest.mark.parametrize(
    ("device", "accelerator", "devices", "expected"),
    [
        ("auto", "cpu", 2, ("cpu", 2)),
        ("cpu", "auto", 1, ("cpu", 1)),
        ("cuda:1", "auto", 1, ("cuda", [1])),
        ("cuda", "gpu", 1, ("cuda", 1)),
    ],
)
def test_one_named_device_or_the_launch_keys(device, accelerator, devices, expected):
    assert fabric_devices(device, accelerator, devices) == expected


@pytest.mark.parametrize(
    ("device", "accelerator", "devices"), [("cuda:1", "auto", 2), ("cpu", "gpu", 1)]
)
def test_a_named_device_that_contradicts_the_launch_keys(device, accelerator, devices):
    with pytest.raises(LaunchError, match=f"device={device} names one device"):
        fabric_devices(device, accelerator, devices)


def test_world_size_must_match_nodes_times_devices():
    check_world_size(2, 3, {"WORLD_SIZE": "6"})
    check_world_size(2, 3, {})  # launched by Lightning itself
    check_world_size(2, 3, {"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "x"})  # torchrun's
    with pytest.raises(
        LaunchError, match="WORLD_SIZE=4 does not match num_nodes=3 x devices=2 = 6"
    ):
        check_world_size(2, 3, {"WORLD_SIZE": "4"})
    with pytest.raises(LaunchError, match="WORLD_SIZE='two' is not a number"):
        check_world_size(1, 1, {"WORLD_SIZE": "two"})


def test_progress_files_of_an_earlier_run_are_ignored(tmp_path):
    RankProgress(tmp_path, "old", Ranks(1, 2), total=3)
    assert read_ranks(tmp_path, "new", 2) == {}
    assert set(read_ranks(tmp_path, "old", 2)) == {1}


def test_rank_zero_waits_for_every_rank_and_counts_their_items(tmp_path):
    trackers = [RankProgress(tmp_path, "run", Ranks(r, 2), total=2, interval=0) for r in range(2)]
    seen = []

    def other_rank():
        for _ in range(2):
            time.sleep(0.1)
            trackers[1].advance({"written": 1})
        trackers[1].finish({"written": 2})

    trackers[0].advance({})
    trackers[0].finish({"written": 1})
    thread = threading.Thread(target=other_rank)
    thread.start()
    states = wait_for_ranks(tmp_path, "run", 2, timeout_s=30, on_progress=seen.append, poll_s=0.02)
    thread.join()
    assert states[1]["counts"] == {"written": 2} and states[1]["finished"]
    assert seen[-1] == 3 and seen == sorted(seen)


def test_a_rank_that_reports_an_error_is_named(tmp_path):
    RankProgress(tmp_path, "run", Ranks(0, 2), total=1).finish({})
    RankProgress(tmp_path, "run", Ranks(1, 2), total=1).finish({}, error="RuntimeError: boom")
    with pytest.raises(RankError, match="rank 1 failed: RuntimeError: boom"):
        wait_for_ranks(tmp_path, "run", 2, timeout_s=30, poll_s=0.01)


def test_a_silent_rank_is_named_after_the_timeout(tmp_path):
    RankProgress(tmp_path, "run", Ranks(0, 3), total=1).finish({})  # finished: never stale
    RankProgress(tmp_path, "run", Ranks(1, 3), total=4)  # started, then nothing
    with pytest.raises(RankError, match="rank 1 stopped after 0 items: nothing from it"):
        wait_for_ranks(tmp_path, "run", 3, timeout_s=0.2, poll_s=0.02)
    (tmp_path / "rank1.json").write_text(json.dumps({"run": "run", "done": 1, "finished": True}))
    with pytest.raises(RankError, match="rank 2 never started"):
        wait_for_ranks(tmp_path, "run", 3, timeout_s=0.2, poll_s=0.02)
