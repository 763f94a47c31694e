"""The round barrier of one epoch: waits for every live function, then merges and releases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from kubeml.runtime.sync import Release, RoundReport

MergeFn = Callable[[int, list[RoundReport]], bool]  # (round, reports) -> proceed?


class RoundBarrier:
    """K-AVG synchronisation for the functions of one epoch.

    Functions call `publish` (from any thread) after storing their weights; it blocks until
    every function still live in that round has published, then the last arrival runs
    `merge(round, reports)` and everyone is released with its answer. A function that
    reported `final` leaves the live set after its round. `fail` removes a function that
    died: it contributes nothing, and every waiter is released with `proceed=False`.
    """

    def __init__(self, func_ids: Sequence[int], merge: MergeFn) -> None:
        self._merge = merge
        self._live = set(func_ids)
        self._pending: dict[int, list[RoundReport]] = {}
        self._released: dict[int, Release] = {}
        self._cond = threading.Condition()
        self.failed: dict[int, BaseException] = {}
        self.rounds_merged = 0
        self.last_progress = time.monotonic()
        self.last_report: RoundReport | None = None

    def publish(self, report: RoundReport) -> Release:
        with self._cond:
            if self.failed:
                return Release(proceed=False)
            self.last_progress = time.monotonic()
            self.last_report = report
            arrived = self._pending.setdefault(report.round, [])
            arrived.append(report)
            if {r.func_id for r in arrived} >= self._live:
                self._complete(report.round)
            while report.round not in self._released:
                self._cond.wait()
            return self._released[report.round]

    def fail(self, func_id: int, error: BaseException) -> None:
        with self._cond:
            self.failed[func_id] = error
            self._live.discard(func_id)
            for round_index in list(self._pending):
                self._released.setdefault(round_index, Release(proceed=False))
            self._cond.notify_all()

    def waiting_for(self) -> set[int]:
        """Live functions that have not published the newest open round."""
        with self._cond:
            if not self._pending:
                return set(self._live)
            open_round = max(self._pending)
            return self._live - {r.func_id for r in self._pending[open_round]}

    def _complete(self, round_index: int) -> None:
        # Sorted, so the float sums of the merge do not depend on arrival order.
        reports = sorted(self._pending[round_index], key=lambda r: r.func_id)
        try:
            proceed = self._merge(round_index, reports)
        except BaseException as exc:
            self.failed[-1] = exc
            proceed = False
        self.rounds_merged += 1
        self._live -= {r.func_id for r in reports if r.final}
        self._released[round_index] = Release(proceed=proceed)
        self.last_progress = time.monotonic()
        self._cond.notify_all()
