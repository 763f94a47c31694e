"""A round's sync on its way while the function trains the next round (`Invocation.overlap`).

The function's thread trains round r+1 from its own weights while a thread of the sync
deposits round r's change at the shards, sends its report, waits for the release and
brings the merged model here. Round r+1's change then moves onto that model
(`EagerWeights.rebase`): the outer step of round r reaches the function one round late,
and the network's time hides behind the next round's steps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from kubeml.runtime.sync import Release, RoundReport, SyncChannel
from kubeml.stores.interfaces import EagerWeights


class InFlight:
    """One round's sync, in its own thread, from the deposit to the merged model held."""

    def __init__(self, eager: EagerWeights, sync: SyncChannel, report: RoundReport) -> None:
        self._eager, self._sync, self._report = eager, sync, report
        self._lock = threading.Lock()  # held while the sync's thread touches the weights
        self._abandoned = False
        self._done = threading.Event()
        self._release: Release | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0  # from the deposit to the merged model held
        thread = threading.Thread(
            target=self._run, name=f"kubeml-sync-{report.func_id}-{report.round}", daemon=True
        )
        thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            with self._lock:
                if self._abandoned:
                    return
                handle = self._eager.deposit()
            release = self._sync.publish(replace(self._report, handle=handle))
            with self._lock:
                if release.proceed and not self._abandoned:
                    self._eager.catch_up()
            self._release = release
        except BaseException as exc:  # the function's thread raises it from `wait`
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - start
            self._done.set()

    def halted(self) -> bool:
        """The release came and stops the function (or the sync failed): the round it is
        training will not be merged."""
        if not self._done.is_set():
            return False
        return self._error is not None or (self._release is not None and not self._release.proceed)

    def wait(self) -> Release:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._release is not None
        return self._release

    def abandon(self) -> None:
        """The function ends without this round's release (its own error): the sync's
        thread sends nothing more and leaves the weights alone."""
        with self._lock:
            self._abandoned = True
