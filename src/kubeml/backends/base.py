"""The interface every function backend implements."""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink, Mode
from kubeml.runtime.sync import Release, RoundReport
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.interfaces import ControlModels


class SyncHandler(Protocol):
    """The parameter server's side of the sync interface (a `RoundBarrier`)."""

    def publish(self, report: RoundReport) -> Release: ...

    def publish_then(self, report: RoundReport, reply: Callable[[Release], None]) -> None:
        """`publish` without waiting: `reply` gets the release from whichever thread
        releases the round."""
        ...

    def fail(self, func_id: int, error: BaseException) -> None: ...

    def progress(self, func_id: int) -> None: ...


class FunctionBackend(ABC):
    """Runs function invocations, N at once, and relays their sync calls.

    `invoke` starts every invocation of the list at the same time (a gang: K-AVG rounds
    need all N running) and returns one future per invocation. A future fails with a
    `KubeMLError`: `FunctionError` (carrying the user's traceback) when user code raised,
    `BackendError` when the worker died. Before it fails, the backend tells the sync
    handler, so no round waits for a dead function.

    A backend builds the control plane's stores its functions read from (`datasets`,
    `models`); the engine uses those and builds none of its own.
    """

    name: str = "backend"
    # A lost worker's invocation may be started again on a fresh one (the job replays its
    # round); False: a lost worker fails the task.
    replaces_workers: bool = True
    # Functions run the torch threads the job gives them (`Invocation.threads`, and a
    # round's `Release.threads`); False: the backend sizes them itself (Ray: its actors).
    takes_threads: bool = True
    # What bounds a function's memory, as `server status` says it.
    memory_limit: str = "not enforced: this backend runs functions in no process of their own"
    datasets: DatasetStore
    models: ControlModels

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    @abstractmethod
    def invoke(
        self,
        invocations: Sequence[Invocation],
        *,
        sync: SyncHandler | None,
        log: LogSink,
    ) -> list[Future[InvocationResult]]: ...

    async def serve(
        self, invocation: Invocation, *, log: LogSink, timeout_s: float
    ) -> InvocationResult:
        """One inference, awaited on the server's event loop. This default waits for
        `invoke`'s future on a thread; a backend whose workers it can await overrides it."""

        def run() -> InvocationResult:
            return self.invoke([invocation], sync=None, log=log)[0].result(timeout=timeout_s)

        return await asyncio.to_thread(run)

    def warm(self, count: int) -> None:  # noqa: B027 - only backends with workers warm up
        """Start `count` workers ahead of demand, so the next invocations find them warm."""

    def cancel(self, task_id: str) -> None:  # noqa: B027 - optional for backends
        """Abandon the running invocations of a task (a hung function)."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release workers and connections."""

    def cores(self) -> int:
        """The cores the functions share, which no N the policy picks exceeds: this
        machine's for the local backends (a backend on a cluster counts the cluster's)."""
        return os.cpu_count() or 1

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "capacity": self.capacity, "memory_limit": self.memory_limit}


def note_unbounded(
    backend: FunctionBackend, inv: Invocation, log: LogSink, default_mb: int = 0
) -> None:
    """Say in the task's log, once as it starts, that its memory limit is not enforced."""
    limit = inv.memory_mb or default_mb
    if inv.mode is Mode.INIT and limit:
        log("job", f"memory limit {limit} MB per function: {backend.memory_limit}")
