"""Fixtures of the training tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Bitwise comparisons of runs need one intra-op thread: with two, the same run twice
    differed in the last bit of most weights now and then when the machine was loaded (CPU
    kernels split their sums by the threads that are free, measured with vit_nano). Modules
    comparing runs use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
