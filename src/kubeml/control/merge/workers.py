"""Merge workers: the parameter server's threads for a round's merge, one per core.

A merge runs while the round's functions wait at the barrier, so the cores are free. Its
work is memory-bound blocks of a few torch ops each; intra-op (OpenMP) threads would make
every op wait at a barrier for a descheduled thread (measured: 1.3-4 s a round for
ResNet-18 at load 8 on 2 cores, vs 0.08 s). MergeWorkers instead pull whole blocks from a
shared counter, each op on one thread: a descheduled lane holds up one block, not every
op. torch ops release the GIL, so the workers run in parallel.

torch's thread count is per OS thread once set, but `torch.set_num_threads` also stores
the count that threads started later begin with; the workers set theirs to 1 and the
count later threads inherit is put back.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


class MergeWorkers:
    """`map(fn, items)` on `threads` background threads; the caller waits.

    The caller's own torch settings are never touched: only the workers run the blocks,
    each with one torch thread, so a block's result is the same on any lane.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"workers need at least one thread, not {threads}")
        self.threads = threads
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        inherited = torch.get_num_threads()
        started = threading.Barrier(threads + 1)
        for index in range(threads):
            threading.Thread(
                target=self._work, args=(started,), name=f"kubeml-merge-{index}", daemon=True
            ).start()
        started.wait()
        torch.set_num_threads(inherited)  # the count threads started later begin with

    def _work(self, started: threading.Barrier) -> None:
        # torch starts a thread's count from the stored one at its first parallel call:
        # make that call first, or it would undo the 1 set here once `inherited` is back.
        torch.get_num_threads()
        torch.set_num_threads(1)
        started.wait()
        while True:
            self._jobs.get()()

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`[fn(item) for item in items]`, the items spread over the workers; the first
        error is raised once every lane has stopped."""
        results: list[R | None] = [None] * len(items)
        errors: list[BaseException] = []
        lock = threading.Lock()
        taken = 0

        def lane() -> None:
            nonlocal taken
            try:
                while not errors:
                    with lock:
                        index, taken = taken, taken + 1
                    if index >= len(items):
                        return
                    results[index] = fn(items[index])
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.release()

        count = min(self.threads, len(items))
        done = threading.Semaphore(0)
        for _ in range(count):
            self._jobs.put(lane)
        for _ in range(count):
            done.acquire()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]  # every index was filled


_workers: MergeWorkers | None = None
_workers_lock = threading.Lock()


def merge_workers() -> MergeWorkers:
    """The process's workers: one per core it may run on (started at the first merge)."""
    global _workers
    with _workers_lock:
        if _workers is None:
            affinity = getattr(os, "sched_getaffinity", None)  # Linux: the cores it may use
            cores = len(affinity(0)) if affinity else os.cpu_count() or 1
            _workers = MergeWorkers(cores)
        return _workers
