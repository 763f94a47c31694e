"""The control plane's side of a Ray actor's relay: its transport, its round socket, the
hooks through which the object-store stores answer, the function source that travels with
an invocation, and what a Ray error means."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from kubeml.backends.base import SyncHandler
from kubeml.backends.ray.rounds import RoundOffer, RoundSocket
from kubeml.backends.ray.stores import RayDatasetStore, RayModelStore, answer
from kubeml.backends.relay import (
    FromFunction,
    Invoke,
    RelayHooks,
    ToFunction,
    answer_round,
)
from kubeml.errors import BackendError, FunctionError
from kubeml.runtime.invocation import FunctionCode, Invocation
from kubeml.runtime.sync import Release, RoundReport


class ActorTransport:
    """The control plane's end of one actor's relay: `Invoke` starts the actor's `run`
    stream, anything else goes through its `deliver`."""

    def __init__(self, actor: Any, offer: RoundOffer | None = None) -> None:
        self.actor, self.offer = actor, offer
        self.stream: Any = None

    def send(self, message: ToFunction) -> None:
        if isinstance(message, Invoke):
            self.stream = iter(self.actor.run.remote(message.invocation, self.offer))
        else:
            self.actor.deliver.remote(message)

    def receive(self) -> FromFunction:
        try:
            ref = next(self.stream)
        except StopIteration:
            raise BackendError("the Ray actor ended the invocation without a result") from None
        message: FromFunction = ray.get(ref)
        return message


class RoundRelay:
    """The control plane's side of one invocation's round socket: `answer`, called by the
    round channels' hub whenever a message is there, hands each `Publish` to the barrier,
    which sends its `Released` once the round is merged."""

    def __init__(self, inv: Invocation, sync: SyncHandler, hooks: RelayHooks) -> None:
        self.inv, self.sync, self.hooks = inv, sync, hooks
        self.end: Callable[[], None] = lambda: None  # shuts the socket down, once offered
        self.failed: Exception | None = None  # what broke the relay, for the invocation

    def answer(self, sock: RoundSocket) -> None:
        """Read one message from `sock` and answer it; EOFError or OSError once it closed."""
        message = sock.recv()
        try:
            answer_round(message, sock.send, self._break, self.inv, self.sync, self.hooks)
        except Exception as exc:
            self._break(exc)
            raise

    def _break(self, exc: Exception) -> None:
        self.failed = exc
        self.end()  # the function's publish fails, and its invocation with it


class RayHooks(RelayHooks):
    """Object refs for the functions' stores: the reference travels with each release."""

    def __init__(self, datasets: RayDatasetStore, models: RayModelStore) -> None:
        self.datasets, self.models = datasets, models

    def before_merge(self, inv: Invocation, report: RoundReport) -> None:
        self.models.prefetch(inv.task_id, report.func_id, report.handle)

    def with_release(self, inv: Invocation, release: Release) -> Any:
        if not (release.proceed or release.validate):
            return None  # the function returns now, without loading the model
        if self.models.sharded.plane(inv.task_id) is not None:
            return None  # a sharded task's functions fetch their update from the shards
        return self.models.reference_for_function(inv.task_id)

    def answer(self, inv: Invocation, what: Any) -> Any:
        return answer(self.datasets, self.models, what)


class FunctionSources:
    """Each function's source, read once from the control plane's files, to travel with
    its invocations: no node needs those files."""

    def __init__(self) -> None:
        self._sources: dict[str, str] = {}

    def carried(self, code: FunctionCode) -> FunctionCode:
        """`code` with its source."""
        source = self._sources.get(code.sha256)
        if source is None:
            try:
                source = Path(code.path).read_text()
            except OSError as exc:
                raise FunctionError(
                    f"function {code.name!r}: cannot read its code {code.path}"
                ) from exc
            self._sources[code.sha256] = source
        return FunctionCode(code.name, code.sha256, code.path, source)


def lost(node_id: str, inv: Invocation, exc: BaseException) -> BackendError:
    """The error of an invocation whose actor (on `node_id`) or node died."""
    text = str(exc)
    if "node has died" in text or "NodeDiedError" in type(exc).__name__:
        why = f"its Ray node {node_id[:12]} left the cluster"
    else:
        first_line = text.strip().splitlines()[0] if text.strip() else "no details"
        why = (
            f"its Ray actor on node {node_id[:12]} died ({first_line}); it may have run "
            "out of memory or been killed"
        )
    error = BackendError(
        f"function {inv.func_id} of task {inv.task_id} was lost: {why} ({type(exc).__name__})"
    )
    error.__cause__ = exc
    return error
