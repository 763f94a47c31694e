"""Inline backend: invocations run as threads of the calling process (tests, debugging)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

from kubeml.backends.base import FunctionBackend, SyncHandler, fail_invocation
from kubeml.runtime.execute import execute
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.models import ModelStore


class InlineBackend(FunctionBackend):
    """One thread per invocation, sharing the process (and torch's thread pool).

    Debuggers and profilers see user code directly. The sync channel is the barrier
    itself. `print` output is not captured; `self.logger` is.
    """

    name = "inline"

    def __init__(self, datasets: DatasetStore, models: ModelStore, capacity: int = 2) -> None:
        super().__init__(capacity)
        self.datasets, self.models = datasets, models

    def invoke(
        self, invocations: Sequence[Invocation], *, sync: SyncHandler | None, log: LogSink
    ) -> list[Future[InvocationResult]]:
        futures = []
        for inv in invocations:
            future: Future[InvocationResult] = Future()
            future.set_running_or_notify_cancel()
            thread = threading.Thread(
                target=self._run,
                args=(inv, sync, log, future),
                name=f"kubeml-{inv.task_id}-{inv.func_id}",
                daemon=True,
            )
            thread.start()
            futures.append(future)
        return futures

    def _run(
        self,
        inv: Invocation,
        sync: SyncHandler | None,
        log: LogSink,
        future: Future[InvocationResult],
    ) -> None:
        try:
            result = execute(inv, datasets=self.datasets, models=self.models, sync=sync, log=log)
        except BaseException as exc:
            fail_invocation(future, sync, inv.func_id, exc)
        else:
            future.set_result(result)
