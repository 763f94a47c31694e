"""The round barrier of one epoch: waits for every live function, then merges and releases."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from kubeml.errors import BackendError
from kubeml.runtime.sync import Release, RoundReport

MergeFn = Callable[[int, list[RoundReport]], Release]  # (round, reports) -> the answer
Reply = Callable[[Release], None]  # answers one `publish_then`


class _MergeThreads:
    """Daemon threads (`kubeml-merge`) that run the merges `publish_then` hands off: an
    idle one is reused, a new one starts only when every other is busy (a merge may wait on
    remote shards). Starting a thread per round made the caller wait for it to start."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child has no threads

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job that no submit has claimed yet

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start, self._idle = self._idle == 0, max(self._idle - 1, 0)
        if start:
            threading.Thread(target=self._work, name="kubeml-merge", daemon=True).start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


_MERGES = _MergeThreads()


class RoundBarrier:
    """K-AVG synchronisation for the functions of one epoch.

    Functions call `publish` (from any thread) after storing their weights; it blocks until
    every function still live in that round has published, then the last arrival runs
    `merge(round, reports)` and everyone is released with the `Release` it returns. A function that
    reported `final` leaves the live set after its round. `publish_then` is the same without
    a waiting thread: its reply is called with the release (the Ray backend answers every
    function's round socket from one thread, so a round wakes one thread, not N).

    `fail` hears of a function that ended badly. A fault in user code releases every
    waiter with `proceed=False`. A lost worker (`BackendError`) releases nobody: its
    unmerged report is forgotten and the round waits, so the job can `join` a replacement
    that trains the round again from the same reference (which is merged only once every
    live function has published), or `drop` the function so the round completes without it.
    """

    def __init__(self, func_ids: Sequence[int], merge: MergeFn) -> None:
        self._merge = merge
        self._live = set(func_ids)
        self._pending: dict[int, list[RoundReport]] = {}
        self._released: dict[int, Release] = {}
        self._replies: dict[int, list[tuple[int, Reply]]] = {}  # by round: (func_id, reply)
        self._cond = threading.Condition()
        self.failed: dict[int, BaseException] = {}
        self.lost: dict[int, BaseException] = {}
        self.rounds_merged = 0
        self.last_progress = time.monotonic()
        self._seen = dict.fromkeys(func_ids, self.last_progress)
        self._alive: set[int] = set()  # functions that gave a sign of life (started)
        self._scoring: set[int] = set()  # released to score their test slice, not yet ended
        self.last_report: RoundReport | None = None

    def publish(self, report: RoundReport) -> Release:
        with self._cond:
            if not self._arrive(report):
                return Release(proceed=False)
            self._complete_ready()
            while report.round not in self._released:
                self._cond.wait()
            due = self._due_replies()
        self._deliver(due)
        return self._released[report.round]

    def publish_then(self, report: RoundReport, reply: Reply) -> None:
        """`publish` without blocking: `reply(release)` is called once the round is
        released, by the thread that releases it. When this report completes the round,
        the merge runs on another thread (`_MergeThreads`): the caller answers other
        functions and must not wait for a merge."""
        with self._cond:
            if not self._arrive(report):
                due = [(reply, Release(proceed=False))]
            else:
                self._replies.setdefault(report.round, []).append((report.func_id, reply))
                due = self._due_replies()  # a round released meanwhile (an abort)
                if not due and self._ready():
                    _MERGES.submit(self._complete_later)
        self._deliver(due)

    def _arrive(self, report: RoundReport) -> bool:
        """Count `report` in (under the lock); False: the epoch failed, or it is a lost
        attempt's late report."""
        if self.failed or report.func_id in self.lost:
            return False
        self.last_progress = self._seen[report.func_id] = time.monotonic()
        self._alive.add(report.func_id)
        self.last_report = report
        if report.round not in self._released:  # else late: its release is there to take
            self._pending.setdefault(report.round, []).append(report)
        return True

    def _complete_later(self) -> None:
        with self._cond:
            self._complete_ready()
            due = self._due_replies()
        self._deliver(due)

    def _due_replies(self) -> list[tuple[Reply, Release]]:
        """The replies of rounds released so far, taken (under the lock)."""
        due = []
        for round_index in [r for r in self._replies if r in self._released]:
            release = self._released[round_index]
            due += [(reply, release) for _, reply in self._replies.pop(round_index)]
        return due

    @staticmethod
    def _deliver(due: list[tuple[Reply, Release]]) -> None:
        """Call the replies outside the lock; one that fails (its function's socket closed)
        stops none of the others."""
        for reply, release in due:
            with contextlib.suppress(Exception):
                reply(release)

    def heartbeat(self, func_ids: Iterable[int]) -> None:
        """Functions that are working (a batch done, a replacement starting): not hung."""
        now = time.monotonic()
        with self._cond:
            for func_id in func_ids:
                self._seen[func_id] = now
                self._alive.add(func_id)

    def progress(self, func_id: int) -> None:
        self.heartbeat([func_id])

    def fail(self, func_id: int, error: BaseException) -> None:
        with self._cond:
            if isinstance(error, BackendError):
                self.lost[func_id] = error
                self._forget(func_id)
                return
            self._abort(func_id, error)
            due = self._due_replies()
        self._deliver(due)

    def abort(self, func_id: int, error: BaseException) -> None:
        """End the epoch: every waiter is released with `proceed=False`."""
        with self._cond:
            self._abort(func_id, error)
            due = self._due_replies()
        self._deliver(due)

    def _abort(self, func_id: int, error: BaseException) -> None:
        self.failed[func_id] = error
        self._live.discard(func_id)
        for round_index in self._pending:
            self._released.setdefault(round_index, Release(proceed=False))
        self._pending.clear()
        self._cond.notify_all()

    def join(self, func_id: int) -> None:
        """A replacement takes over a lost function's place, in the round still open; a
        report of the lost attempt that slipped in after its failure is forgotten."""
        with self._cond:
            self.lost.pop(func_id, None)
            self._forget(func_id)
            self._seen[func_id] = time.monotonic()
            self._alive.discard(func_id)  # a fresh worker: it may take time to start

    def drop(self, func_id: int) -> None:
        """A lost function is not replaced: the open round completes without it."""
        with self._cond:
            self.lost.pop(func_id, None)
            self._live.discard(func_id)
            self._complete_ready()
            due = self._due_replies()
        self._deliver(due)

    def _forget(self, func_id: int) -> None:
        """Drop `func_id`'s report (and reply) from the open rounds (under the lock)."""
        for reports in self._pending.values():
            reports[:] = [r for r in reports if r.func_id != func_id]
        for replies in self._replies.values():
            replies[:] = [(f, reply) for f, reply in replies if f != func_id]

    def live(self) -> set[int]:
        with self._cond:
            return set(self._live)

    def waiting_for(self) -> set[int]:
        """Live functions that have not published the newest open round, and those
        scoring their test slices after the epoch's last."""
        with self._cond:
            return self._waiting_for()

    def stalled(self, timeout_s: float, start_timeout_s: float = 0.0) -> set[int]:
        """Functions the open round waits for that gave no sign of life for `timeout_s`
        (or, before their first one, for `start_timeout_s`: a cold worker imports torch)."""
        now = time.monotonic()
        with self._cond:
            return {
                f
                for f in self._waiting_for()
                if now - self._seen[f]
                > (timeout_s if f in self._alive else max(timeout_s, start_timeout_s))
            }

    def _waiting_for(self) -> set[int]:
        if not self._pending:
            return self._live | self._scoring
        return self._live - {r.func_id for r in self._pending[max(self._pending)]} | self._scoring

    def ended(self, func_id: int) -> None:
        """`func_id`'s invocation ended: a function scoring its test slice is not waited for."""
        with self._cond:
            self._scoring.discard(func_id)

    def _ready(self) -> list[int]:
        """Open rounds every live function has published (a live function has at most one
        report in a round, so a round with fewer reports than live functions is not)."""
        return [
            round_index
            for round_index, arrived in sorted(self._pending.items())
            if arrived
            and len(arrived) >= len(self._live)
            and {r.func_id for r in arrived} >= self._live
        ]

    def _complete_ready(self) -> None:
        for round_index in self._ready():
            self._complete(round_index)

    def _complete(self, round_index: int) -> None:
        # Sorted, so the float sums of the merge do not depend on arrival order.
        reports = sorted(self._pending.pop(round_index), key=lambda r: r.func_id)
        try:
            release = self._merge(round_index, reports)
        except BaseException as exc:
            self.failed[-1] = exc
            release = Release(proceed=False)
        self.rounds_merged += 1
        self._live -= {r.func_id for r in reports if r.final}
        if release.validate:  # they score their test slices now: a hang is still a hang
            self._scoring |= {r.func_id for r in reports}
        self._released[round_index] = release
        self.last_progress = time.monotonic()
        self._seen = dict.fromkeys(self._seen, self.last_progress)
        self._cond.notify_all()


class AttemptSync:
    """The barrier as one attempt of some functions sees it: once a function has been
    replaced, late calls of its earlier attempt are ignored."""

    def __init__(self, barrier: RoundBarrier, current: dict[int, int], func_ids: Sequence[int]):
        self.barrier, self._current = barrier, current
        self._mine = {f: current[f] for f in func_ids}
        self._dead: set[int] = set()  # failed: whatever it still sends is ignored

    def _valid(self, func_id: int) -> bool:
        return func_id not in self._dead and self._current.get(func_id) == self._mine.get(func_id)

    def publish(self, report: RoundReport) -> Release:
        if not self._valid(report.func_id):
            return Release(proceed=False)
        return self.barrier.publish(report)

    def publish_then(self, report: RoundReport, reply: Reply) -> None:
        if not self._valid(report.func_id):
            reply(Release(proceed=False))
        else:
            self.barrier.publish_then(report, reply)

    def fail(self, func_id: int, error: BaseException) -> None:
        if self._valid(func_id):
            self._dead.add(func_id)  # a report still in flight (Ray's round socket) is late
            self.barrier.fail(func_id, error)

    def progress(self, func_id: int) -> None:
        if self._valid(func_id):
            self.barrier.heartbeat([func_id])


class PlainSync:
    """The sync channel of init and validation: no rounds, only the heartbeat."""

    def __init__(self) -> None:
        self.last_progress = time.monotonic()
        self.started = False

    def publish(self, report: RoundReport) -> Release:
        raise BackendError("function published weights outside a train round")

    def publish_then(self, report: RoundReport, reply: Reply) -> None:
        self.publish(report)

    def fail(self, func_id: int, error: BaseException) -> None:
        pass  # the job hears of it through the invocation's future

    def progress(self, func_id: int) -> None:
        self.last_progress, self.started = time.monotonic(), True
