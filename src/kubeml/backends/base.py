"""The interface every function backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from kubeml.errors import FunctionError, KubeMLError
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink
from kubeml.runtime.sync import Release, RoundReport
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.models import ModelStore


class SyncHandler(Protocol):
    """The parameter server's side of the sync interface (a `RoundBarrier`)."""

    def publish(self, report: RoundReport) -> Release: ...

    def fail(self, func_id: int, error: BaseException) -> None: ...


class FunctionBackend(ABC):
    """Runs function invocations, N at once, and relays their sync calls.

    `invoke` starts every invocation of the list at the same time (a gang: K-AVG rounds
    need all N running) and returns one future per invocation. A future fails with a
    `KubeMLError`: `FunctionError` (carrying the user's traceback) when user code raised,
    `BackendError` when the worker died. Before it fails, the backend tells the sync
    handler, so no round waits for a dead function.
    """

    name: str = "backend"
    datasets: DatasetStore
    models: ModelStore

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

    def cancel(self, task_id: str) -> None:  # noqa: B027 - optional for backends
        """Abandon the running invocations of a task (a hung function)."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release workers and connections."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "capacity": self.capacity}


def fail_invocation(
    future: Future[InvocationResult],
    sync: SyncHandler | None,
    func_id: int,
    error: BaseException,
) -> None:
    """Fail one invocation: the round barrier hears first, so no round waits for a dead
    function, then the job's future. Errors that are not kubeml's become `FunctionError`."""
    if not isinstance(error, KubeMLError):
        error = FunctionError(repr(error))
    if sync is not None:
        sync.fail(func_id, error)
    future.set_exception(error)
