"""The backend's node servers: one `ShardServer` per node that runs functions, holding
parameter shards and dataset chunks, shared by the tasks."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kubeml.backends.ray import cluster
from kubeml.backends.ray.shard_server import CONCURRENCY, ShardServer

PING_S = 10.0


class ServerPool:
    """The backend's node servers (parameter shards and dataset chunks), one per node that
    runs functions, shared by tasks; a lost one is replaced once, whichever task finds it.

    Args:
        chunk_budget_bytes: the dataset chunks each server keeps at most.
    """

    def __init__(self, chunk_budget_bytes: int = 4 * 2**30) -> None:
        self.chunk_budget_bytes = chunk_budget_bytes
        self._remote = ray.remote(ShardServer)
        self._servers: list[tuple[str, Any]] = []  # (node id, handle)
        self._replaced: dict[Any, Any] = {}  # a lost handle -> its successor
        self._nodes_seen = (0, -1e9)  # (how many, when)
        self._lock = threading.Lock()

    @staticmethod
    def nodes() -> list[str]:
        """Live nodes with CPUs (where functions run), in a stable order."""
        return sorted(n for n, r in cluster.live_nodes().items() if r.get("CPU", 0.0) > 0)

    def _start(self, node: str | None) -> Any:
        # Ray reports every actor call to its head (the control plane's node) as task
        # events, for its state API, which kubeml does not read: about 1 KB a call, 2·S
        # calls per function and round (deposit, update), on the control plane's link.
        options: dict[str, Any] = {
            "num_cpus": 0,
            "max_concurrency": CONCURRENCY,
            "enable_task_events": False,
        }
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return self._remote.options(**options).remote(self.chunk_budget_bytes)

    def servers(self, count: int, started: bool = False) -> list[Any]:
        """`count` servers, on distinct nodes while there are enough (`started`: only
        those started so far)."""
        with self._lock:
            if started:
                return [handle for _, handle in self._servers]
            nodes: list[str | None] = [*self.nodes()] or [None]
            while len(self._servers) < count:
                used = {node for node, _ in self._servers}
                free = [n for n in nodes if n not in used] or nodes
                node = free[len(self._servers) % len(free)]
                self._servers.append((node or "?", self._start(node)))
            return [handle for _, handle in self._servers[:count]]

    def per_node(self) -> list[Any]:
        """One server on every node that runs functions (the homes of dataset chunks);
        the nodes are looked up at most every 10 s."""
        now = time.monotonic()
        if now - self._nodes_seen[1] > 10:
            self._nodes_seen = (max(1, len(self.nodes())), now)
        return self.servers(self._nodes_seen[0])

    def where(self) -> list[tuple[str, int]]:
        with self._lock:
            handles = [handle for _, handle in self._servers]
        places = []
        for handle in handles:
            try:
                places.append(tuple(ray.get(handle.where.remote(), timeout=PING_S)))
            except (RayError, TimeoutError):
                continue  # lost: replaced when a task finds it
        return places

    def placed(self, handles: Sequence[Any]) -> list[tuple[str, Any]]:
        """(node id, handle) of each of `handles` this pool started, where it was placed."""
        with self._lock:
            nodes = {id(handle): node for node, handle in self._servers}
        return [(nodes[id(h)], h) for h in handles if id(h) in nodes]

    def replace(self, lost: Any) -> Any:
        """The server standing in for `lost` (started on first ask)."""
        with self._lock:
            if lost in self._replaced:
                return self._replaced[lost]
            index = next((i for i, (_, h) in enumerate(self._servers) if h is lost), None)
            used = {node for node, h in self._servers if h is not lost}
            nodes: list[str | None] = [*self.nodes()] or [None]
            node = next((n for n in nodes if n not in used), nodes[0])
            handle = self._start(node)
            if index is not None:
                self._servers[index] = (node or "?", handle)
            self._replaced[lost] = handle
            return handle

    def close(self) -> None:
        with self._lock:
            for _, handle in self._servers:
                with contextlib.suppress(Exception):  # Ray shutting down
                    ray.kill(handle, no_restart=True)
            self._servers.clear()
