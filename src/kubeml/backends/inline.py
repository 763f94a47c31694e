"""Inline backend: invocations run as threads of the calling process (tests, debugging)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

from kubeml.backends.base import FunctionBackend, SyncHandler, note_unbounded
from kubeml.backends.relay import Done, resolve, start_gang
from kubeml.runtime.execute import execute
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink
from kubeml.stores.datasets import LocalDatasetStore
from kubeml.stores.models import LocalModelStore


class InlineBackend(FunctionBackend):
    """One thread per invocation, sharing the process (and torch's thread pool).

    Debuggers and profilers see user code directly. No message crosses a transport: the
    sync channel is the barrier itself and the stores are the control plane's. `print`
    output is not captured; `self.logger` is.
    """

    name = "inline"
    datasets: LocalDatasetStore
    models: LocalModelStore

    def __init__(
        self, datasets: LocalDatasetStore, models: LocalModelStore, capacity: int = 2
    ) -> None:
        super().__init__(capacity)
        self.datasets, self.models = datasets, models

    memory_limit = "not enforced: the inline backend runs functions in the server's own process"

    def invoke(
        self, invocations: Sequence[Invocation], *, sync: SyncHandler | None, log: LogSink
    ) -> list[Future[InvocationResult]]:
        if invocations:
            note_unbounded(self, invocations[0], log)

        def run(_: int, inv: Invocation, future: Future[InvocationResult]) -> None:
            try:
                result = execute(inv, shards=self.datasets, models=self.models, sync=sync, log=log)
            except BaseException as exc:
                resolve(future, sync, inv.func_id, exc)
            else:
                resolve(future, sync, inv.func_id, Done(result))

        return start_gang(invocations, run, "inline")

    def close(self) -> None:
        self.models.release_scratch()
