"""A backend's warm workers, idle or busy until the pool is closed; one class for every
backend that keeps workers (the process backend's processes, the Ray backend's actors).

The pool only keeps the books under one lock: which workers are idle, which run which
task, whether it is closed. How a worker starts, what it costs and where it may go stay
with the backend, which passes them in: `start` makes new workers (called with the lock
held, so starts never overlap), `choose` picks among the idle ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubeml.errors import BackendError


@dataclass(eq=False, kw_only=True)
class PooledWorker:
    """What the pool keeps about a worker; a backend's worker class adds its handle and
    says how it is killed."""

    pid: int | None = None  # known once it runs (a Ray actor answers once placed)
    task_id: str | None = None  # the task it runs now, while busy
    last_task_id: str | None = None  # the task it ran last (it may keep that model loaded)
    runs: int = 0  # times it was released: one that ran anything has user modules loaded
    idle_since: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return True

    def kill(self) -> None:
        """Stop it at once, from any thread: whoever relays its invocation sees it die."""

    def close(self) -> None:
        """Kill it and free what it holds; called once it belongs to no invocation."""
        self.kill()


W = TypeVar("W", bound=PooledWorker)

# `choose(idle, busy)` -> (taken, discarded): the idle workers a request takes, and idle
# ones to close (they hold resources the new ones need); it may raise to refuse.
Choose = Callable[[list[W], list[W]], tuple[list[W], list[W]]]
Start = Callable[[int], list[W]]


class WorkerPool(Generic[W]):
    """Idle and busy workers, and whether the pool is closed (then it takes no worker
    back and hands none out).

    Args:
        backend: the backend's name, for the error a closed pool raises.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._idle: list[W] = []
        self._busy: list[W] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def acquire(
        self,
        count: int,
        task_id: str,
        *,
        start: Start[W] | None,
        choose: Choose[W] | None = None,
    ) -> list[W]:
        """Up to `count` workers for `task_id`, busy from now on: the idle ones `choose`
        takes (by default the first), then new ones from `start` for the rest (None: only
        idle ones, maybe none). Dead idle workers and those `choose` discards are closed."""
        with self._lock:
            if self._closed:
                raise BackendError(f"the {self.backend} backend is closed")
            idle = [w for w in self._idle if w.alive()]
            dead = [w for w in self._idle if not w.alive()]
            discarded: list[W] = []
            if choose is None:
                taken = idle[:count]
            else:
                taken, discarded = choose(idle, list(self._busy))
            missing = count - len(taken)
            new = start(missing) if start is not None and missing > 0 else []
            self._idle = [w for w in idle if w not in taken and w not in discarded]
            taken = taken + new
            for worker in taken:
                worker.task_id = task_id
            self._busy.extend(taken)
        for worker in dead + discarded:
            worker.close()
        return taken

    def top_up(self, count: int, start: Start[W]) -> None:
        """Start idle workers until `count` are idle (none once closed)."""
        self._grow(start, lambda idle: count - idle)

    def add(self, count: int, start: Start[W]) -> None:
        """Start `count` more idle workers (none once closed)."""
        self._grow(start, lambda idle: count)

    def _grow(self, start: Start[W], missing: Callable[[int], int]) -> None:
        with self._lock:
            if self._closed:
                return
            dead = [w for w in self._idle if not w.alive()]
            self._idle = [w for w in self._idle if w.alive()]
            wanted = missing(len(self._idle))
            if wanted > 0:
                self._idle.extend(start(wanted))
        for worker in dead:
            worker.close()

    def release(self, worker: W, *, healthy: bool) -> None:
        """A worker's invocation is over: a healthy one waits idle for the next; any other
        (or any, once the pool is closed) is closed."""
        with self._lock:
            if worker in self._busy:
                self._busy.remove(worker)
            worker.last_task_id, worker.task_id = worker.task_id, None
            worker.runs += 1
            worker.idle_since = time.monotonic()
            if healthy and not self._closed and worker.alive():
                self._idle.append(worker)
                return
        worker.close()

    def expire(self, idle_timeout_s: float) -> None:
        """Close the workers idle for longer than `idle_timeout_s` (scale to zero)."""
        now = time.monotonic()
        with self._lock:
            expired = [w for w in self._idle if now - w.idle_since > idle_timeout_s]
            self._idle = [w for w in self._idle if w not in expired]
        for worker in expired:
            worker.close()

    def cancel(self, task_id: str) -> None:
        """Kill the workers running `task_id`; their relays see them die and fail the
        invocations, and then release them."""
        with self._lock:
            doomed = [w for w in self._busy if w.task_id == task_id]
        for worker in doomed:
            worker.kill()

    def close(self) -> list[W] | None:
        """Close the pool: it keeps no worker from now on. Returns every worker it had, for
        the backend to shut down its own way; None if it was closed already."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            workers, self._idle, self._busy = self._idle + self._busy, [], []
        return workers

    def idle_count(self) -> int:
        with self._lock:
            return sum(1 for w in self._idle if w.alive())

    def busy(self) -> list[W]:
        with self._lock:
            return list(self._busy)

    def workers(self) -> list[tuple[W, str]]:
        """Every worker with its state, "idle" or "busy"."""
        with self._lock:
            return [(w, "idle") for w in self._idle] + [(w, "busy") for w in self._busy]

    def describe(self) -> dict[str, Any]:
        with self._lock:
            idle = sum(1 for w in self._idle if w.alive())
            busy = list(self._busy)
        pids: dict[str, list[int]] = {}
        for worker in busy:
            if worker.pid is not None:
                pids.setdefault(worker.task_id or "", []).append(worker.pid)
        return {
            "warm_workers": idle,
            "busy_workers": len(busy),
            "worker_pids": pids,  # by task: what an operator (or a chaos test) may kill
        }
