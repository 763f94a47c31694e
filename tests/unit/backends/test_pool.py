"""The worker pool both backends keep their workers in: idle, busy, closed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kubeml.backends.pool import PooledWorker, WorkerPool
from kubeml.errors import BackendError


@dataclass(eq=False)
class _Fake(PooledWorker):
    name: str = ""
    dead: bool = False
    killed: bool = False
    closed: bool = False

    def alive(self) -> bool:
        return not self.dead

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        self.closed = True


def _starter(started: list[_Fake]):
    def start(count: int) -> list[_Fake]:
        new = [_Fake(name=f"w{len(started) + i}", pid=100 + len(started) + i) for i in range(count)]
        started.extend(new)
        return new

    return start


def test_acquire_takes_idle_workers_first_and_starts_the_rest() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    pool.top_up(2, _starter(started))
    assert pool.idle_count() == 2
    taken = pool.acquire(3, "t1", start=_starter(started))
    assert [w.name for w in taken] == ["w0", "w1", "w2"]
    assert all(w.task_id == "t1" for w in taken)
    assert pool.describe() == {
        "warm_workers": 0,
        "busy_workers": 3,
        "worker_pids": {"t1": [100, 101, 102]},
    }


def test_without_start_only_idle_workers_are_handed_out() -> None:
    pool: WorkerPool[_Fake] = WorkerPool("test")
    assert pool.acquire(1, "t1", start=None) == []


def test_release_keeps_healthy_workers_and_closes_the_others() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    good, bad = pool.acquire(2, "t1", start=_starter(started))
    pool.release(good, healthy=True)
    pool.release(bad, healthy=False)
    assert (good.closed, bad.closed) == (False, True)
    assert (good.task_id, good.last_task_id, good.runs) == (None, "t1", 1)
    assert [(w.name, s) for w, s in pool.workers()] == [("w0", "idle")]


def test_dead_idle_workers_are_closed_not_handed_out() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    pool.top_up(2, _starter(started))
    started[0].dead = True
    taken = pool.acquire(2, "t1", start=_starter(started))
    assert [w.name for w in taken] == ["w1", "w2"] and started[0].closed


def test_choose_picks_and_discards_idle_workers() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    pool.top_up(3, _starter(started))

    def choose(idle, busy):
        return [idle[2]], [idle[0]]

    taken = pool.acquire(1, "t1", start=_starter(started), choose=choose)
    assert [w.name for w in taken] == ["w2"] and started[0].closed
    assert [w.name for w, _ in pool.workers()] == ["w1", "w2"]  # w1 idle, w2 busy


def test_a_refusing_choose_changes_nothing() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    pool.top_up(1, _starter(started))

    def refuse(idle, busy):
        raise BackendError("no room")

    with pytest.raises(BackendError, match="no room"):
        pool.acquire(2, "t1", start=_starter(started), choose=refuse)
    assert pool.idle_count() == 1 and len(started) == 1


def test_cancel_kills_the_tasks_workers_only() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    (a,) = pool.acquire(1, "a", start=_starter(started))
    (b,) = pool.acquire(1, "b", start=_starter(started))
    pool.cancel("a")
    assert (a.killed, b.killed) == (True, False)


def test_expire_closes_workers_idle_too_long() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    pool.top_up(2, _starter(started))
    started[0].idle_since -= 100
    pool.expire(idle_timeout_s=50)
    assert started[0].closed and pool.idle_count() == 1


def test_a_closed_pool_hands_out_nothing_and_takes_nothing_back() -> None:
    started: list[_Fake] = []
    pool: WorkerPool[_Fake] = WorkerPool("test")
    (busy,) = pool.acquire(1, "t1", start=_starter(started))
    pool.top_up(1, _starter(started))
    assert pool.close() == [started[1], busy]
    assert pool.close() is None  # once
    assert pool.closed
    with pytest.raises(BackendError, match="the test backend is closed"):
        pool.acquire(1, "t2", start=_starter(started))
    pool.release(busy, healthy=True)
    assert busy.closed
    pool.top_up(3, _starter(started))
    assert pool.idle_count() == 0
