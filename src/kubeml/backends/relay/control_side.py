"""The control plane's side of the relay: `drive` answers one function's messages until
its `Done` or `Failed`, `answer_round` a message of its round socket; `start_gang` starts
a round's N invocations at once and `resolve` gives each future its outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from kubeml.backends.base import SyncHandler
from kubeml.backends.relay.messages import (
    Answer,
    Done,
    Failed,
    FromFunction,
    Invoke,
    LogLines,
    Progress,
    Publish,
    Released,
    Request,
    ToFunction,
)
from kubeml.errors import BackendError, FunctionError, KubeMLError
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink
from kubeml.runtime.sync import Release, RoundReport


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


def answer_round(
    message: FromFunction,
    send: Callable[[ToFunction], None],
    fail: Callable[[Exception], None],
    inv: Invocation,
    sync: SyncHandler,
    hooks: RelayHooks,
) -> None:
    """Answer a message of a function's second transport for its rounds (`Endpoint.rounds`)
    without waiting: the barrier calls back with the release, which `send` sends; what
    goes wrong there, but a closed connection (its invocation hears why), goes to `fail`."""
    if not isinstance(message, Publish):
        raise BackendError(f"relay protocol error: {type(message).__name__} on the rounds")
    hooks.before_merge(inv, message.report)

    def reply(release: Release) -> None:
        try:
            send(Released(release, hooks.with_release(inv, release)))
        except (EOFError, OSError):
            pass
        except Exception as exc:
            fail(exc)

    sync.publish_then(message.report, reply)


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
    runs `run(index, inv, future)`, which resolves the future."""
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


def resolve(
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
