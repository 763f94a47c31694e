"""The arguments and result of one function invocation, and the context user code runs in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from kubeml.errors import KubeMLError

if TYPE_CHECKING:
    from kubeml.runtime.sync import SyncChannel
    from kubeml.stores.datasets import DatasetStore
    from kubeml.stores.models import ModelStore


class Mode(str, Enum):
    """What an invocation is asked to do."""

    INIT = "init"  # build the network, run the user's init, publish the reference model
    TRAIN = "train"  # one epoch on a shard, in K-AVG rounds
    VALIDATE = "validate"  # score a slice of the test set with the reference model
    INFER = "infer"  # predictions of a finished task's model


@dataclass(frozen=True)
class FunctionCode:
    """A deployed function: its name, the hash of its code, and where to read it."""

    name: str
    sha256: str
    path: str
    source: str | None = None  # carried code; workers load it instead of reading `path`


@dataclass(frozen=True)
class Invocation:
    """Everything one invocation needs; picklable, so it crosses processes and Ray."""

    mode: Mode
    task_id: str
    function: FunctionCode
    dataset: str
    func_id: int = 0
    parallelism: int = 1
    k: int = -1
    lr: float = 0.01
    batch_size: int = 64
    epoch: int = 0
    seed: int = 0
    ranges: tuple[tuple[int, int], ...] = ()  # sample ranges of this function's shard
    optimizer_state: str = "keep"
    threads: int = 1
    infer_data: list[Any] | None = None

    @property
    def job_id(self) -> str:
        return self.task_id


@dataclass
class InvocationResult:
    func_id: int
    mode: Mode
    samples: int = 0
    loss: float | None = None  # mean train or validation loss
    accuracy: float | None = None  # validation accuracy, percent
    rounds: int = 0
    output: Any = None  # infer output, JSON-able


LogSink = Callable[[str, str], None]  # (source, message)


@dataclass
class InvocationContext:
    """What `KubeModel.start()` finds when the runtime calls the user's `main()`."""

    invocation: Invocation
    datasets: DatasetStore
    models: ModelStore
    sync: SyncChannel | None
    logger: logging.Logger
    result: InvocationResult | None = field(default=None)


_current: ContextVar[InvocationContext | None] = ContextVar("kubeml_invocation", default=None)


def current_context() -> InvocationContext:
    ctx = _current.get()
    if ctx is None:
        raise KubeMLError(
            "KubeModel.start() runs only inside a kubeml invocation: deploy this file with "
            "`kubeml function create --name NAME --code FILE` and start it with `kubeml train`"
        )
    return ctx


def peek_context() -> InvocationContext | None:
    return _current.get()
