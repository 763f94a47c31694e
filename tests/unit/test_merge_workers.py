"""Merge workers: blocks spread over threads, results in order, torch's threads untouched."""

import threading

import pytest
import torch

from kubeml.control.merge.workers import MergeWorkers


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_map_returns_every_result_in_item_order(threads):
    workers = MergeWorkers(threads)
    seen: set[str] = set()

    def square(x: int) -> int:
        seen.add(threading.current_thread().name)
        torch.ones(1000).mul_(2)  # a torch op, as the merge's blocks are
        return x * x

    assert workers.map(square, list(range(200))) == [x * x for x in range(200)]
    assert workers.map(square, []) == []
    assert workers.map(square, [7]) == [49]
    assert seen and all(name.startswith("kubeml-merge-") for name in seen)


def test_blocks_run_with_one_torch_thread_and_the_callers_count_is_kept():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        workers = MergeWorkers(2)
        counts = workers.map(lambda _: torch.get_num_threads(), list(range(50)))
        assert set(counts) == {1}
        assert torch.get_num_threads() == 2
        started: list[int] = []  # what a thread started later begins with
        thread = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert started == [2]
    finally:
        torch.set_num_threads(saved)


def test_the_first_error_is_raised_and_the_lanes_keep_working():
    workers = MergeWorkers(2)

    def fail_on_13(x: int) -> int:
        if x == 13:
            raise ValueError("block 13 is bad")
        return x

    with pytest.raises(ValueError, match="block 13 is bad"):
        workers.map(fail_on_13, list(range(100)))
    assert workers.map(fail_on_13, list(range(10))) == list(range(10))


def test_lanes_need_a_thread():
    with pytest.raises(ValueError, match="at least one thread, not 0"):
        MergeWorkers(0)
