"""Per-round progress of train tasks, kept in memory for `task watch` and the dashboard.

The history persists one record per epoch; the rounds between are only interesting while
a task trains, so they live here, bounded, and are lost with the control plane.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from kubeml.api.schemas import EpochRecord, RoundPoint, TrainRequest
from kubeml.control.plan.chunks import even_splits

if TYPE_CHECKING:
    from kubeml.control.job.ports import JobListener

MAX_POINTS = 5000  # per task: an hour of 1 s rounds; older points are dropped first
MAX_TASKS = 64  # tasks whose points are kept; the least recently updated go first


def round_plan(train_size: int, parallelism: int, request: TrainRequest, epoch: int) -> list[int]:
    """Samples trained in each round of an epoch, by all N functions together.

    Function i trains its stretch of the epoch's order (`chunks.epoch_orders`: N even
    stretches) in batches and merges every K batches (once per epoch for K=-1); the epoch
    has as many rounds as its longest stretch needs.
    """
    return _rounds([stop - start for start, stop in even_splits(train_size, parallelism)], request)


def resplit_plan(left: int, parallelism: int, request: TrainRequest) -> list[int]:
    """The rounds of an epoch's rest after N changed: the job re-splits the `left` samples
    evenly over the new N (`chunks.resplit`)."""
    return _rounds([stop - start for start, stop in even_splits(left, parallelism)], request)


def _rounds(shard_sizes: list[int], request: TrainRequest) -> list[int]:
    batch = request.batch_size
    per_function = []
    for samples in shard_sizes:
        batches = -(-samples // batch)
        k = request.k if request.k > 0 else max(1, batches)
        per_round = k * batch
        per_function.append([min(per_round, samples - r * per_round)
                             for r in range(-(-batches // k))])  # fmt: skip
    rounds = max((len(p) for p in per_function), default=0)
    return [sum(p[r] for p in per_function if r < len(p)) for r in range(rounds)]


class _TaskPoints:
    def __init__(self) -> None:
        self.points: list[RoundPoint] = []
        self.dropped = 0  # points before `points[0]`, so indexes stay stable
        self.started = time.monotonic()
        self.last: tuple[int, float] | None = None  # (epoch, monotonic time) of the last round
        self.plan: tuple[tuple[int, int], list[int]] | None = None  # ((epoch, N), plan)
        # ((epoch, N, points so far), plan) once N changed within the epoch
        self.resplit: tuple[tuple[int, int, int], list[int]] | None = None
        self.train_size: int | None = None


class ProgressBook:
    """Round points of recent tasks.

    Args:
        train_size: the number of training samples of a dataset, by name.
    """

    def __init__(self, train_size: Callable[[str], int]) -> None:
        self._train_size = train_size
        self._tasks: OrderedDict[str, _TaskPoints] = OrderedDict()
        self._lock = threading.Lock()

    def task_started(self, task_id: str) -> None:
        """The task (or its resume) starts running: elapsed times count from now."""
        with self._lock:
            self._entry(task_id).started = time.monotonic()

    def on_round(
        self, task_id: str, epoch: int, round_index: int, train_loss: float, parallelism: int,
        samples: int,
    ) -> None:  # fmt: skip
        """A merged round that trained `samples` (exact: N may change within an epoch)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entry(task_id)
            rate = None
            if entry.last is not None and entry.last[0] == epoch and now > entry.last[1]:
                rate = samples / (now - entry.last[1])
            entry.last = (epoch, now)
            point = RoundPoint(
                index=entry.dropped + len(entry.points), epoch=epoch, round=round_index,
                train_loss=train_loss, parallelism=parallelism, samples=samples,
                samples_per_s=rate, elapsed_s=now - entry.started, time=datetime.now(timezone.utc),
            )  # fmt: skip
            entry.points.append(point)
            if len(entry.points) > MAX_POINTS:
                excess = len(entry.points) - MAX_POINTS
                del entry.points[:excess]
                entry.dropped += excess

    def plan(self, task_id: str, request: TrainRequest, epoch: int, parallelism: int) -> list[int]:
        """Samples of each round of this epoch: `round_plan` at N (cached per task: a
        shuffle of the chunk order); after N changed within the epoch, the rounds merged up
        to the last change, then the rest as the job re-split it."""
        with self._lock:
            entry = self._entry(task_id)
            key = (epoch, parallelism, entry.dropped + len(entry.points))
            if entry.resplit is not None and entry.resplit[0] == key:
                return entry.resplit[1]  # the page polls: nothing merged since
            cached = entry.plan
            points = [p for p in entry.points if p.epoch == epoch]
            if entry.train_size is None:
                entry.train_size = self._train_size(request.dataset)
            train_size = entry.train_size
        changed = [i for i, p in enumerate(points) if p.parallelism != parallelism]
        if changed:
            done = [p.samples for p in points[: changed[-1] + 1]]
            plan = done + resplit_plan(max(0, train_size - sum(done)), parallelism, request)
            with self._lock:
                entry.resplit = (key, plan)
            return plan
        if cached is not None and cached[0] == (epoch, parallelism):
            return cached[1]
        plan = round_plan(train_size, parallelism, request, epoch)
        with self._lock:
            entry.plan = ((epoch, parallelism), plan)
        return plan

    def rounds(self, task_id: str, since: int = 0) -> list[RoundPoint]:
        with self._lock:
            entry = self._tasks.get(task_id)
            if entry is None:
                return []
            return entry.points[max(0, since - entry.dropped) :]

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def _entry(self, task_id: str) -> _TaskPoints:
        entry = self._tasks.get(task_id)
        if entry is None:
            entry = self._tasks[task_id] = _TaskPoints()
            while len(self._tasks) > MAX_TASKS:
                self._tasks.popitem(last=False)
        self._tasks.move_to_end(task_id)
        return entry


class RecordingRounds:
    """A job listener that records each round in a `ProgressBook`, then passes every
    event on to the task's own listener (its recorder)."""

    def __init__(self, inner: JobListener, book: ProgressBook, task_id: str) -> None:
        self._inner, self._book, self._task_id = inner, book, task_id
        book.task_started(task_id)

    def on_round(
        self, epoch: int, round_index: int, train_loss: float, parallelism: int, samples: int
    ) -> None:
        self._inner.on_round(epoch, round_index, train_loss, parallelism, samples)
        self._book.on_round(self._task_id, epoch, round_index, train_loss, parallelism, samples)

    def on_epoch(self, record: EpochRecord) -> None:
        self._inner.on_epoch(record)

    def on_invocations(self, started: int, failed: int) -> None:
        self._inner.on_invocations(started, failed)

    def on_function_lost(self, replaced: bool) -> None:
        self._inner.on_function_lost(replaced)

    def on_restore(self, records: list[EpochRecord]) -> None:
        self._inner.on_restore(records)
