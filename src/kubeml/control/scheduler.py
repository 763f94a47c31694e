"""The scheduler: a FIFO queue of tasks and the function slots they hold."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from kubeml.errors import CapacityError


@dataclass(frozen=True)
class Admit:
    """A decision: start `task_id` now with `parallelism` functions (its slots are held)."""

    task_id: str
    parallelism: int


@dataclass(frozen=True)
class Grant:
    """The answer to a resize: the parallelism granted, and tasks the freed slots admit."""

    parallelism: int
    admitted: list[Admit] = field(default_factory=list)


class Scheduler:
    """Gang admission of train tasks into `capacity` function slots.

    A task starts only when all N of its functions fit (K-AVG rounds need them running
    at once); otherwise it waits in FIFO order, and a later task never jumps a waiting
    one. A running task can grow into free slots between epochs (`resize`) and gives
    slots back when it shrinks or ends. Every call returns the tasks it admits; the
    scheduler starts nothing itself, so it is pure bookkeeping behind one lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[tuple[str, int]] = deque()
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        with self._lock:
            return self._free()

    def submit(self, task_id: str, parallelism: int) -> list[Admit]:
        if parallelism > self.capacity:
            raise CapacityError(
                f"parallelism {parallelism} exceeds the capacity of {self.capacity} function "
                "slots; lower --parallelism or raise KUBEML_CAPACITY"
            )
        with self._lock:
            self._queue.append((task_id, parallelism))
            return self._admit()

    def cancel(self, task_id: str) -> bool:
        """Remove a task that is still queued; False if it is not in the queue."""
        with self._lock:
            for item in self._queue:
                if item[0] == task_id:
                    self._queue.remove(item)
                    return True
        return False

    def queued(self) -> list[str]:
        with self._lock:
            return [task_id for task_id, _ in self._queue]

    def running(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

    def resize(self, task_id: str, wanted: int) -> Grant:
        """Grow or shrink a running task's slots (at least one, at most what is free)."""
        with self._lock:
            held = self._held[task_id]
            if wanted > held and self._queue:
                return Grant(held)  # queued tasks come first
            granted = max(1, min(wanted, held + self._free()))
            self._held[task_id] = granted
            return Grant(granted, self._admit() if granted < held else [])

    def finished(self, task_id: str) -> list[Admit]:
        """Give a task's slots back (a no-op for a task that holds none)."""
        with self._lock:
            self._held.pop(task_id, None)
            return self._admit()

    def _free(self) -> int:
        return self.capacity - sum(self._held.values())

    def _admit(self) -> list[Admit]:
        admitted = []
        while self._queue and self._queue[0][1] <= self._free():
            task_id, parallelism = self._queue.popleft()
            self._held[task_id] = parallelism
            admitted.append(Admit(task_id, parallelism))
        return admitted
