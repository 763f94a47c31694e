"""The scheduler: a FIFO queue of tasks and the function slots they hold."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from kubeml.errors import CapacityError


class Scheduler:
    """Gang admission of train tasks into `capacity` function slots.

    A task starts only when all N of its functions fit (K-AVG rounds need them running
    at once); otherwise it waits in FIFO order, and a later task never jumps a waiting
    one. A running task can grow into free slots between epochs (`try_resize`) and gives
    slots back when it shrinks or ends.
    """

    def __init__(self, capacity: int, start: Callable[[str, int], None]) -> None:
        self.capacity = capacity
        self._start = start
        self._queue: deque[tuple[str, int]] = deque()
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return self.capacity - sum(self._held.values())

    def submit(self, task_id: str, parallelism: int) -> None:
        if parallelism > self.capacity:
            raise CapacityError(
                f"parallelism {parallelism} exceeds the capacity of {self.capacity} function "
                "slots; lower --parallelism or raise KUBEML_CAPACITY"
            )
        with self._lock:
            self._queue.append((task_id, parallelism))
        self._dispatch()

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

    def try_resize(self, task_id: str, wanted: int) -> int:
        """Grow or shrink a running task's slots; returns the parallelism granted."""
        with self._lock:
            held = self._held[task_id]
            if wanted > held and self._queue:
                return held  # queued tasks come first
            granted = min(wanted, held + self.free)
            self._held[task_id] = max(1, granted)
            granted = self._held[task_id]
        if granted < held:
            self._dispatch()
        return granted

    def finished(self, task_id: str) -> None:
        with self._lock:
            self._held.pop(task_id, None)
        self._dispatch()

    def _dispatch(self) -> None:
        to_start = []
        with self._lock:
            while self._queue and self._queue[0][1] <= self.free:
                task_id, parallelism = self._queue.popleft()
                self._held[task_id] = parallelism
                to_start.append((task_id, parallelism))
        for task_id, parallelism in to_start:
            self._start(task_id, parallelism)
