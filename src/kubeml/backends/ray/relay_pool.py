"""The backend's node relays (`node_relay`): one per node where a task has several
functions, started the first time one is wanted and offered once it is up."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kubeml.backends.ray.node_relay import NodeRelayActor
from kubeml.backends.ray.rounds import RoundChannels

START_TIMEOUT_S = 60.0
RETRY_S = 30.0  # after a relay failed to start, functions on its node connect directly


@dataclass(eq=False)
class _Relay:
    handle: Any = None
    address: tuple[str, int] | None = None  # once up
    pid: int = 0
    failed: float = 0.0  # when it failed to start (monotonic), or 0


class NodeRelays:
    """Relays on the nodes, for the round sockets of `channels`.

    Args:
        channels: the control plane's round channels, which each relay connects to.
        min_functions: a task's functions on one node from which they go through the
            node's relay (0: never; 1: always, even alone).
    """

    def __init__(self, channels: RoundChannels, min_functions: int = 4) -> None:
        self.min_functions = min_functions
        self._channels = channels
        self._remote = ray.remote(NodeRelayActor)
        self._relays: dict[str, _Relay] = {}  # by node id
        self._lock = threading.Lock()
        self._closed = False

    def address(self, node_id: str, functions: int) -> tuple[str, int] | None:
        """Where `functions` functions of one task on `node_id` connect for their rounds:
        the node's relay once it is up (the first call starts it), or None (directly)."""
        if not self.min_functions or functions < self.min_functions or node_id == "?":
            return None
        with self._lock:
            relay = self._relays.get(node_id)
            retry = relay is not None and relay.failed and time.monotonic() - relay.failed > RETRY_S
            if (relay is None or retry) and not self._closed:
                relay = self._relays[node_id] = _Relay()
                threading.Thread(
                    target=self._start, args=(node_id, relay), name="kubeml-relay-start",
                    daemon=True,
                ).start()  # fmt: skip
        return relay.address if relay is not None else None

    def _start(self, node_id: str, relay: _Relay) -> None:
        token = self._channels.offer_link(functools.partial(self._lost, node_id, relay))
        try:
            relay.handle = self._remote.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                enable_task_events=False,  # as the shard servers: no events to the head
            ).remote(self._channels.address, token)
            address = ray.get(relay.handle.address.remote(), timeout=START_TIMEOUT_S)
            relay.pid = ray.get(relay.handle.where.remote(), timeout=START_TIMEOUT_S)[1]
        except Exception:  # no relay: the functions connect directly
            self._channels.revoke_link(token)
            relay.failed = time.monotonic()
            _kill(relay)
            return
        with self._lock:
            closed = self._closed
        if closed:
            _kill(relay)
        else:
            relay.address = tuple(address)

    def _lost(self, node_id: str, relay: _Relay) -> None:
        """A relay's connection ended (it died, or its node): the next wants a new one."""
        relay.address = None
        with self._lock:
            if self._relays.get(node_id) is relay and not relay.failed:
                del self._relays[node_id]
        _kill(relay)

    def describe(self) -> dict[str, int]:
        """The relays up: node id -> pid."""
        with self._lock:
            return {n: r.pid for n, r in self._relays.items() if r.address is not None}

    def close(self) -> None:
        with self._lock:
            relays, self._relays, self._closed = list(self._relays.values()), {}, True
        for relay in relays:
            _kill(relay)


def _kill(relay: _Relay) -> None:
    if relay.handle is not None:
        with contextlib.suppress(Exception):
            ray.kill(relay.handle, no_restart=True)
