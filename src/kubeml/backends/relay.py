"""The relay between the control plane and a function, shared by every backend.

Typed messages cross a backend's transport (a pipe, a Ray actor's stream): the control
side's `drive` loop answers a function's log lines, round reports and store requests
until its `Done` or `Failed`; the function side's `serve` runs one invocation on a worker
and sends them; `start_gang` starts the N invocations of a round at once. A backend
supplies only its transport, its workers and, through `RelayHooks`, what its stores need.

Room to grow: a per-batch heartbeat (`Progress`) or batched log lines are new message
types (or more `lines` per `LogLines`); `drive` hands each message kind to one branch.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from kubeml.backends.base import SyncHandler
from kubeml.errors import BackendError, FunctionError, FunctionExitError, KubeMLError
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink
from kubeml.runtime.sync import HEARTBEAT_S, Release, RoundReport
from kubeml.stores.interfaces import FunctionModels, ShardSource


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


# -- the control side -------------------------------------------------------------------------
class ControlTransport(Protocol):
    """The control plane's end of one worker's connection."""

    def send(self, message: ToFunction) -> None: ...

    def receive(self) -> FromFunction:
        """The next message; raises (EOFError, OSError, a Ray error) if the worker is gone."""
        ...


class AsyncControlTransport(ControlTransport, Protocol):
    """A connection the event loop can watch: `readable` resolves once a message is there."""

    async def readable(self) -> None: ...


class RelayHooks:
    """What a backend's stores add to the relay; the defaults suit local stores."""

    def before_merge(self, inv: Invocation, report: RoundReport) -> None:
        """A round report arrived, before it reaches the barrier (Ray prefetches here)."""

    def with_release(self, inv: Invocation, release: Release) -> Any:
        """What to send along with a release (`Released.reference`)."""
        return None

    def answer(self, inv: Invocation, what: Any) -> Any:
        raise BackendError(f"unknown request {type(what).__name__} from a function")


def drive(
    transport: ControlTransport,
    inv: Invocation,
    sync: SyncHandler | None,
    log: LogSink,
    hooks: RelayHooks,
) -> Done | Failed:
    """Send `inv` and relay its messages until it is done or failed. Transport errors
    propagate: the backend knows what they mean (a dead process, a lost node)."""
    transport.send(Invoke(inv))
    while True:
        outcome = _relay(transport.receive(), transport, inv, sync, log, hooks)
        if outcome is not None:
            return outcome


async def drive_async(
    transport: AsyncControlTransport, inv: Invocation, log: LogSink, hooks: RelayHooks
) -> Done | Failed:
    """`drive` for an inference on an event loop: waiting for the worker's next message
    holds no thread."""
    transport.send(Invoke(inv))
    while True:
        await transport.readable()
        outcome = _relay(transport.receive(), transport, inv, None, log, hooks)
        if outcome is not None:
            return outcome


def relay_rounds(
    transport: ControlTransport,
    inv: Invocation,
    sync: SyncHandler | None,
    log: LogSink,
    hooks: RelayHooks,
) -> None:
    """Answer the rounds a function publishes over a second transport (`Endpoint.rounds`),
    beside `drive` on its first, until the function closes it (EOFError, OSError)."""
    while True:
        outcome = _relay(transport.receive(), transport, inv, sync, log, hooks)
        if outcome is not None:
            raise BackendError(f"relay protocol error: {type(outcome).__name__} on the rounds")


def _relay(
    message: FromFunction,
    transport: ControlTransport,
    inv: Invocation,
    sync: SyncHandler | None,
    log: LogSink,
    hooks: RelayHooks,
) -> Done | Failed | None:
    """Answer one message of a function; its outcome when the message ends the invocation."""
    if isinstance(message, LogLines):
        for line in message.lines:
            log(message.source, line)
    elif isinstance(message, Progress):
        if sync is not None:
            sync.progress(message.func_id)
    elif isinstance(message, Publish):
        if sync is None:
            raise BackendError("function published weights outside a train round")
        hooks.before_merge(inv, message.report)
        release = sync.publish(message.report)
        transport.send(Released(release, hooks.with_release(inv, release)))
    elif isinstance(message, Request):
        transport.send(_answer(hooks, inv, message.what))
    elif isinstance(message, Done | Failed):
        return message
    else:
        raise BackendError(f"relay protocol error: unexpected {type(message).__name__}")
    return None


def _answer(hooks: RelayHooks, inv: Invocation, what: Any) -> Answer:
    try:
        return Answer(hooks.answer(inv, what))
    except KubeMLError as exc:
        return Answer(error=exc)
    except Exception as exc:  # answered, so the function fails instead of hanging
        return Answer(error=BackendError(f"the control plane failed a request: {exc!r}"))


def start_gang(
    invocations: Sequence[Invocation],
    run: Callable[[int, Invocation, Future[InvocationResult]], None],
    name: str,
) -> list[Future[InvocationResult]]:
    """Start every invocation at once (K-AVG rounds need all N running): one thread each
    runs `run(index, inv, future)`, which settles the future."""
    futures = []
    for index, inv in enumerate(invocations):
        future: Future[InvocationResult] = Future()
        future.set_running_or_notify_cancel()
        threading.Thread(
            target=run,
            args=(index, inv, future),
            name=f"kubeml-{name}-{inv.task_id}-{inv.func_id}",
            daemon=True,
        ).start()
        futures.append(future)
    return futures


def settle(
    future: Future[InvocationResult],
    sync: SyncHandler | None,
    func_id: int,
    outcome: Done | Failed | BaseException,
) -> None:
    """Give an invocation's future its result, or fail it: the round barrier hears first,
    so no round waits for a dead function. Errors that are not kubeml's become
    `FunctionError`."""
    if isinstance(outcome, Done):
        future.set_result(outcome.result)
        return
    error = outcome.error if isinstance(outcome, Failed) else outcome
    if not isinstance(error, KubeMLError):
        error = FunctionError(repr(error))
    if sync is not None:
        sync.fail(func_id, error)
    future.set_exception(error)


# -- the function side ------------------------------------------------------------------------
class FunctionTransport(Protocol):
    """A worker's end of its connection to the control plane."""

    def send(self, message: FromFunction) -> None: ...

    def receive(self) -> ToFunction: ...


class Endpoint:
    """The function's end of the relay: its sync channel, its log sink, its requests.

    Sends may come from user threads (log lines), so they lock.
    """

    def __init__(
        self,
        transport: FunctionTransport,
        on_reference: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.transport = transport
        self.on_reference = on_reference
        self._lock = threading.Lock()
        self._last_beat = 0.0
        self.writer: _LineWriter | None = None  # printed lines waiting for their batch
        # A second connection for the rounds alone (Ray: a direct socket, see
        # kubeml.backends.ray.rounds); only the function's own thread publishes.
        self.rounds: FunctionTransport | None = None

    def send(self, message: FromFunction) -> None:
        with self._lock:
            self.transport.send(message)

    def log(self, source: str, message: str) -> None:
        self.send(LogLines(source, (message,)))

    def progress(self, func_id: int) -> None:
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_S:
            self._last_beat = now
            self.send(Progress(func_id))
            if self.writer is not None and self.writer.due():
                self.writer.send_lines()  # a line printed before a long quiet stretch

    def publish(self, report: RoundReport) -> Release:
        if self.rounds is not None:
            self.rounds.send(Publish(report))
            answer = self.rounds.receive()
        else:
            self.send(Publish(report))
            answer = self.transport.receive()
        if not isinstance(answer, Released):
            raise BackendError(f"relay protocol error: expected a release, got {answer!r}")
        if answer.reference is not None and self.on_reference is not None:
            self.on_reference(report.task_id, answer.reference)
        return answer.release

    def ask(self, what: Any) -> Any:
        self.send(Request(what))
        answer = self.transport.receive()
        if not isinstance(answer, Answer):
            raise BackendError(f"relay protocol error: expected an answer, got {answer!r}")
        if answer.error is not None:
            raise answer.error
        return answer.value


class _LineWriter(io.TextIOBase):
    """Stands in for stdout/stderr during an invocation; whole lines go to the task log,
    batched: one message per 0.2 s or 512 lines, so printing never slows a function."""

    EVERY_S, MAX_LINES = 0.2, 512

    def __init__(self, endpoint: Endpoint, source: str) -> None:
        self.endpoint, self.source, self._buffer = endpoint, source, ""
        self._lines: list[str] = []
        self._sent = time.monotonic()

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        self._lines.extend(line for line in lines if line.strip())
        if len(self._lines) >= self.MAX_LINES or self.due():
            self.send_lines()
        return len(text)

    def due(self) -> bool:
        return bool(self._lines) and time.monotonic() - self._sent >= self.EVERY_S

    def send_lines(self) -> None:
        lines, self._lines, self._sent = self._lines, [], time.monotonic()
        if lines:
            self.endpoint.send(LogLines(self.source, tuple(lines)))

    def flush(self) -> None:
        if self._buffer.strip():
            self._lines.append(self._buffer)
        self._buffer = ""
        self.send_lines()


def serve(endpoint: Endpoint, inv: Invocation, shards: ShardSource, models: FunctionModels) -> None:
    """Run one invocation on this worker, with its print and logging output captured into
    the task log, and send its `Done` or `Failed`."""
    from kubeml.runtime.execute import SinkHandler, execute, set_level

    shards.begin(inv.task_id)
    models.begin(inv.task_id)
    source = f"function-{inv.func_id}"
    root = logging.getLogger()
    handler = SinkHandler(endpoint.log, source)
    saved_level, saved_out, saved_err = root.level, sys.stdout, sys.stderr
    out = endpoint.writer = _LineWriter(endpoint, source)
    root.addHandler(handler)
    set_level(root, logging.INFO)  # the seed logs its progress; workers keep INFO
    sys.stdout = sys.stderr = out
    try:
        result = execute(inv, shards=shards, models=models, sync=endpoint, log=endpoint.log)
    except BaseException as exc:
        error = exc if isinstance(exc, KubeMLError) else FunctionError(repr(exc))
        out.flush()
        endpoint.send(Failed(error, replace_worker=isinstance(error, FunctionExitError)))
    else:
        out.flush()
        endpoint.send(Done(result))
    finally:
        sys.stdout, sys.stderr = saved_out, saved_err
        endpoint.writer = None
        root.removeHandler(handler)
        set_level(root, saved_level)
