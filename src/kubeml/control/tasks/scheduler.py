"""The scheduler: a FIFO queue of tasks and the function slots they hold."""

from __future__ import annotations

import itertools
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
class Resize:
    """A decision: running task `task_id` should run `parallelism` functions from its next
    round boundary, where it answers with `Scheduler.answer`; `reason` goes in its log."""

    task_id: str
    parallelism: int
    reason: str


Decision = Admit | Resize


@dataclass(frozen=True)
class Grant:
    """The answer to a resize: the parallelism granted, and what the change decided."""

    parallelism: int
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class _Running:
    held: int  # slots held: never fewer than the functions the task runs
    elastic: bool  # False for static tasks: the scheduler never resizes them
    wish: int  # the N the task last chose for itself; freed slots grow it up to this
    order: int  # admission order: ties go to the older task
    asked: int | None = None  # the N of the Resize it has not answered yet


class Scheduler:
    """Gang admission of train tasks into `capacity` function slots, and their sharing.

    A task starts only when all N of its functions fit (K-AVG rounds need them running
    at once); otherwise it waits in FIFO order, and a later task never jumps a waiting
    one. Elastic (non-static) tasks share the slots at round boundaries:

    - When the task at the head of the queue does not fit, but would once elastic tasks
      gave back slots above one function each, they are asked to shrink: one slot at a
      time from the task holding the most (ties: the youngest gives first), just enough
      for the head. Their slots stay held until each shrinks at its next round boundary
      (`answer`), so capacity is never oversubscribed; the head starts once all fit.
    - When slots are free and nothing waits, elastic tasks below their wish (the N they
      asked for at submission or chose since) are asked to grow: one slot at a time to
      the task holding the fewest (ties: the oldest first).

    Every call returns its decisions (`Admit`, `Resize`); the scheduler starts and
    resizes nothing itself, so it is pure bookkeeping behind one lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[tuple[str, int, bool]] = deque()  # (task, N, elastic)
        self._running: dict[str, _Running] = {}
        self._admissions = itertools.count()
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        with self._lock:
            return self._free()

    def submit(self, task_id: str, parallelism: int, *, elastic: bool = False) -> list[Decision]:
        """Queue a task for `parallelism` slots; `elastic` ones may be resized later."""
        if parallelism > self.capacity:
            raise CapacityError(
                f"parallelism {parallelism} exceeds the capacity of {self.capacity} function "
                "slots; lower --parallelism or raise KUBEML_CAPACITY"
            )
        with self._lock:
            self._queue.append((task_id, parallelism, elastic))
            return self._rebalance("")

    def cancel(self, task_id: str) -> bool:
        """Remove a task that is still queued; False if it is not in the queue.
        (`finished` then answers what its leaving decides.)"""
        with self._lock:
            for item in self._queue:
                if item[0] == task_id:
                    self._queue.remove(item)
                    return True
        return False

    def queued(self) -> list[str]:
        with self._lock:
            return [task_id for task_id, _, _ in self._queue]

    def running(self) -> dict[str, int]:
        """The slots each running task holds."""
        with self._lock:
            return {task_id: r.held for task_id, r in self._running.items()}

    def resize(self, task_id: str, wanted: int) -> Grant:
        """The task's own choice of N (its policy's, or its survivors after a lost
        function): remembered as its wish, granted as far as slots are free and no task
        waits; a shrink asked of it still holds."""
        with self._lock:
            task = self._running[task_id]
            task.wish = max(1, min(wanted, self.capacity))
            granted = self._grant(task, wanted)
            if task.asked is not None and task.asked < task.held:
                granted = min(granted, task.asked)
            return self._apply(task_id, task, granted)

    def answer(self, task_id: str, parallelism: int) -> Grant:
        """A task answers a `Resize` at its round boundary: a shrink frees its slots at
        once; a growth gets what is still free (up to its wish, after queued tasks)."""
        with self._lock:
            task = self._running[task_id]
            granted = self._grant(task, min(parallelism, max(task.wish, task.held)))
            return self._apply(task_id, task, granted)

    def finished(self, task_id: str) -> list[Decision]:
        """Give a task's slots back (a no-op for a task that holds none)."""
        with self._lock:
            self._running.pop(task_id, None)
            return self._rebalance(f"task {task_id} ended")

    # -- bookkeeping, under the lock ----------------------------------------------------
    def _free(self) -> int:
        return self.capacity - sum(r.held for r in self._running.values())

    def _grant(self, task: _Running, wanted: int) -> int:
        """What a task may hold for `wanted`: at least one, growing only into free slots
        that no queued task is waiting for."""
        if wanted > task.held and self._queue:
            return task.held
        return max(1, min(wanted, task.held + self._free()))

    def _apply(self, task_id: str, task: _Running, granted: int) -> Grant:
        freed = task.held - granted
        task.held, task.asked = granted, None  # the task answered: nothing is pending
        cause = f"task {task_id} gave {freed} back" if freed > 0 else ""
        return Grant(granted, self._rebalance(cause))

    def _rebalance(self, cause: str) -> list[Decision]:
        """Admit what fits, then ask elastic tasks to shrink for the queue's head or to
        grow into free slots. Only changes of what was asked are returned."""
        decisions: list[Decision] = list(self._admit())
        targets = {t: r.held for t, r in self._running.items() if r.elastic}
        reason = ""
        if self._queue:
            head, needed, _ = self._queue[0]
            missing = needed - self._free()
            if 0 < missing <= sum(n - 1 for n in targets.values()):
                for _ in range(missing):
                    t = max(targets, key=lambda t: (targets[t], self._running[t].order))
                    targets[t] -= 1
                reason = f"slots taken back for task {head}"
        else:
            growing = {t for t in targets if self._running[t].wish > targets[t]}
            for _ in range(self._free()):
                if not growing:
                    break
                t = min(growing, key=lambda t: (targets[t], self._running[t].order))
                targets[t] += 1
                if targets[t] >= self._running[t].wish:
                    growing.discard(t)
            reason = "slots freed" + (f" ({cause})" if cause else "")
        for t, target in targets.items():
            task = self._running[t]
            if target != (task.held if task.asked is None else task.asked):
                task.asked = None if target == task.held else target
                decisions.append(Resize(t, target, reason))
        return decisions

    def _admit(self) -> list[Admit]:
        admitted = []
        while self._queue and self._queue[0][1] <= self._free():
            task_id, parallelism, elastic = self._queue.popleft()
            order = next(self._admissions)
            self._running[task_id] = _Running(parallelism, elastic, parallelism, order)
            admitted.append(Admit(task_id, parallelism))
        return admitted
