"""What runs on a Ray worker: the `FunctionActor`, a warm function container (torch and the
user's module stay imported between invocations)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator

import ray

from kubeml.backends.ray.function_stores import RemoteDatasetStore, RemoteModelStore
from kubeml.backends.ray.rounds import RoundOffer
from kubeml.backends.ray.rounds import connect as connect_rounds
from kubeml.backends.relay import (
    Done,
    Endpoint,
    Failed,
    FromFunction,
    PipeTransport,
    ToFunction,
    run_invocation,
)
from kubeml.errors import BackendError
from kubeml.runtime.invocation import Invocation


class _QueueTransport:
    """The actor's end of the relay: messages out through `run`'s stream, in through
    `deliver`."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[FromFunction] = queue.Queue()
        self.inbox: queue.Queue[ToFunction] = queue.Queue()

    def send(self, message: FromFunction) -> None:
        self.outbox.put(message)

    def receive(self) -> ToFunction:
        return self.inbox.get()


class FunctionActor:
    """A warm function container on some Ray node (used as `ray.remote(FunctionActor)`).

    `run` is a streaming generator that yields an invocation's relay messages; `deliver`
    brings it the control plane's releases and answers.
    """

    def __init__(self) -> None:
        import kubeml.runtime.execute
        import kubeml.sdk

        kubeml.runtime.execute.warm_up()  # torch and its first optimizer, while idle

        self._transport = _QueueTransport()
        self._endpoint = Endpoint(self._transport)
        self._datasets = RemoteDatasetStore(self._endpoint.ask)
        self._models = RemoteModelStore(self._endpoint.ask)
        self._endpoint.on_reference = self._models.receive_reference

    def where(self) -> tuple[str, int]:
        """(node id, pid): where the actor was placed, once it has started."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self, inv: Invocation, offer: RoundOffer | None = None) -> Iterator[FromFunction]:
        """Run one invocation, yielding its relay messages up to its `Done` or `Failed`;
        with an `offer`, its rounds go over a direct socket (`kubeml.backends.ray.rounds`)."""
        transport = self._transport = _QueueTransport()
        self._endpoint.transport = transport
        rounds = connect_rounds(offer) if offer is not None else None
        self._endpoint.rounds = PipeTransport(rounds) if rounds is not None else None

        def work() -> None:
            try:
                run_invocation(self._endpoint, inv, self._datasets, self._models)
            except BaseException as exc:  # user errors are reported already; this is ours
                transport.send(Failed(BackendError(f"the Ray worker failed: {exc!r}")))
            finally:
                self._endpoint.rounds = None
                if rounds is not None:
                    rounds.close()  # the control plane's side of the rounds ends

        thread = threading.Thread(target=work, name=f"kubeml-{inv.task_id}-{inv.func_id}")
        thread.start()
        while True:
            message = transport.outbox.get()
            yield message
            if isinstance(message, Done | Failed):
                break
        thread.join()

    def deliver(self, message: ToFunction) -> None:
        """A message for the running invocation (a release or an answer)."""
        self._transport.inbox.put(message)
