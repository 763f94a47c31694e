"""The relay's messages: what crosses a backend's transport, in each direction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeml.errors import KubeMLError
from kubeml.runtime.invocation import Invocation, InvocationResult
from kubeml.runtime.sync import Release, RoundReport


# -- messages to a function -------------------------------------------------------------------
@dataclass(frozen=True)
class Invoke:
    invocation: Invocation


@dataclass(frozen=True)
class Released:
    """The answer to `Publish`: the round is merged."""

    release: Release
    reference: Any = None  # what the backend's store sends along (Ray: the new reference)


@dataclass(frozen=True)
class Answer:
    """The answer to a `Request`: a value, or the control plane's error."""

    value: Any = None
    error: KubeMLError | None = None


@dataclass(frozen=True)
class Shutdown:
    """A warm worker should exit."""


# -- messages from a function -----------------------------------------------------------------
@dataclass(frozen=True)
class LogLines:
    source: str  # e.g. "function-0"
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Progress:
    """The function's heartbeat: it is working on a batch (sent at most every 0.5 s)."""

    func_id: int


@dataclass(frozen=True)
class Publish:
    """The function published its weights for a round and waits for `Released`."""

    report: RoundReport


@dataclass(frozen=True)
class Request:
    """A store request of the backend's own (Ray: object refs of datasets and weights)."""

    what: Any


@dataclass(frozen=True)
class Done:
    result: InvocationResult


@dataclass(frozen=True)
class Failed:
    error: KubeMLError
    replace_worker: bool = False  # user code exited: the worker's state is not trusted


ToFunction = Invoke | Released | Answer | Shutdown
FromFunction = LogLines | Progress | Publish | Request | Done | Failed
