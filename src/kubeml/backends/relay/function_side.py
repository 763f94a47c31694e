"""The function's side of the relay: the `Endpoint` a worker's invocation talks through,
and `run_invocation`, which runs one invocation on a worker with its output captured."""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubeml.backends.relay.messages import (
    Answer,
    Done,
    Failed,
    FromFunction,
    LogLines,
    Progress,
    Publish,
    Released,
    Request,
    ToFunction,
)
from kubeml.errors import BackendError, FunctionError, FunctionExitError, KubeMLError
from kubeml.runtime.invocation import Invocation
from kubeml.runtime.sync import HEARTBEAT_S, Release, RoundReport
from kubeml.stores.interfaces import FunctionModels, ShardSource


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
        # One exchange at a time over `transport`: a request and its answer, or a report
        # and its release (an overlapped round publishes from the sync's thread).
        self._exchange = threading.Lock()
        self._last_beat = self._last_look = 0.0
        self.heartbeat_s = HEARTBEAT_S  # the invocation's (`Invocation.heartbeat_s`)
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
        if now - self._last_look < HEARTBEAT_S:
            return
        self._last_look = now
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            self.send(Progress(func_id))
        if self.writer is not None and self.writer.due():
            self.writer.send_lines()  # a line printed before a long quiet stretch

    def publish(self, report: RoundReport) -> Release:
        if self.rounds is not None:
            try:
                self.rounds.send(Publish(report))
                answer = self.rounds.receive()
            except (EOFError, OSError) as exc:
                # The connection broke, not the user's code: the job replays the round (a
                # report that reached the control plane is forgotten with the attempt).
                raise BackendError(
                    f"function {report.func_id}: its round socket to the control plane "
                    f"broke in round {report.round} ({type(exc).__name__})"
                ) from exc
        else:
            with self._exchange:
                self.send(Publish(report))
                answer = self.transport.receive()
        if not isinstance(answer, Released):
            raise BackendError(f"relay protocol error: expected a release, got {answer!r}")
        # A release is a heartbeat: the barrier counts every function it releases as seen
        # then. Without this, a round that waited at the barrier longer than HEARTBEAT_S
        # would send one message more per function and round to the control plane.
        self._last_beat = time.monotonic()
        if answer.reference is not None and self.on_reference is not None:
            self.on_reference(report.task_id, answer.reference)
        return answer.release

    def ask(self, what: Any) -> Any:
        with self._exchange:
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


def run_invocation(
    endpoint: Endpoint, inv: Invocation, shards: ShardSource, models: FunctionModels
) -> None:
    """Run one invocation on this worker, with its print and logging output captured into
    the task log, and send its `Done` or `Failed`."""
    from kubeml.runtime.execute import SinkHandler, execute, set_level

    shards.begin(inv.task_id)
    models.begin(inv.task_id)
    endpoint.heartbeat_s = inv.heartbeat_s
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
