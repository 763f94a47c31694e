"""What a job is given and what it reports to: its services, listener, slots and outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kubeml.api.schemas import EpochRecord, TaskState
from kubeml.backends.base import FunctionBackend
from kubeml.control.records.checkpoints import CheckpointStore
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.interfaces import ControlModels


class JobListener(Protocol):
    """Where a job reports progress (the engine records it as task state and history)."""

    def on_round(
        self, epoch: int, round_index: int, train_loss: float, parallelism: int, samples: int
    ) -> None: ...

    def on_epoch(self, record: EpochRecord) -> None: ...

    def on_invocations(self, started: int, failed: int) -> None: ...

    def on_function_lost(self, replaced: bool) -> None: ...

    def on_restore(self, records: list[EpochRecord]) -> None: ...


class Slots(Protocol):
    """The job's side of the scheduler: how it asks for function slots and gives them back."""

    def want(self, parallelism: int) -> int:
        """The job's own choice of N (its policy's, or its survivors after a lost
        function): returns the N granted now; freed slots may grow it up to N later."""
        ...

    def answer(self, parallelism: int) -> int:
        """At a round boundary, take the N the scheduler asked for (its `Resize`): returns
        the N granted; slots given back go to queued tasks at once."""
        ...

    def busy(self) -> int:
        """The slots every running task holds now, this one's included."""
        ...


class NextParallelism(Protocol):
    """A parallelism policy, as the job sees it (`kubeml.control.tasks.policy`)."""

    def next_parallelism(self, record: EpochRecord, capacity: int) -> int: ...


@dataclass(frozen=True)
class JobServices:
    backend: FunctionBackend
    datasets: DatasetStore
    models: ControlModels
    log: Callable[[str, str], None]  # (source, message) into this task's log
    slots: Slots
    round_timeout_s: float = 600.0
    checkpoints: CheckpointStore | None = None
    start_timeout_s: float = 120.0  # from invoke to a function's first sign of life
    torch_threads: int = 0  # pinned torch threads per function; 0: the cores' share


@dataclass(frozen=True)
class JobOutcome:
    state: TaskState
    error: str | None = None
    traceback: str | None = None
