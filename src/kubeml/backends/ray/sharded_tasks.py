"""Which of the Ray model store's tasks are sharded, and their planes.

A task asks for its parameter plane when its job starts (`ShardRequest`: S and the sync
precision); the plane is made when the task's model first exists (init, or a resume),
and from then on the store answers for it from the shards: the functions get a
`ShardRoute` instead of the model, the parameter server merges through the plane
(`ShardedMerge`), and checkpoints and the final model gather from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from kubeml.backends.ray.server_pool import ServerPool
from kubeml.backends.ray.shard_plane import ShardPlane, gather
from kubeml.errors import BackendError
from kubeml.runtime.sync import RoundReport
from kubeml.stores.flat import FlatLayout
from kubeml.stores.interfaces import Groups, RemoteMerge, ShardRequest
from kubeml.stores.outer_rule import NOISE_KEY, noise_state
from kubeml.stores.shard_plan import OuterStep


class ShardedMerge(RemoteMerge):
    """The parameter server's merge of one sharded task."""

    def __init__(self, plane: ShardPlane, model: Groups) -> None:
        self.plane, self._model = plane, model

    def merge(self, reports: Sequence[RoundReport], settle: bool = False) -> None:
        self.plane.merge(reports, settle)

    def outer_state(self) -> dict[str, torch.Tensor]:
        return self.plane.outer_state()

    def snapshot(self) -> Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """Every shard keeps a copy of itself now (a round trip of small calls); the
        callable gathers those copies later, in a checkpoint's thread, so the rounds go on
        while the model and its outer state cross the control plane's link."""
        plane = self.plane
        pairs = [(spec.index, plane.servers[spec.index]) for spec in plane.specs]
        refs = [server.snapshot.remote(plane.task_id, index) for index, server in pairs]
        gather(refs, f"task {plane.task_id}: taking a snapshot of its shards", BackendError)
        noise = noise_state(plane.noise)  # as the shards' copies: between two rounds

        def collect() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
            refs = [server.taken.remote(plane.task_id, index) for index, server in pairs]
            what = f"task {plane.task_id}: gathering a checkpoint from its shards"
            states = gather(refs, what, BackendError)
            if any(state is None for state in states):
                raise BackendError(f"{what}: a shard server was replaced before")
            groups, outer = plane.assemble(states)
            plane.gathers += 1
            return plane.layout.views(groups), {**outer, **noise}

        return collect

    def load_outer_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Resume the shards with the checkpoint's momentum (and the functions' view, and
        the adaptive step's noise share)."""
        momentum: dict[str, torch.Tensor] = {}
        view: dict[str, torch.Tensor] = {}
        noise = None
        for key, tensor in state.items():
            kind, _, dtype = key.partition(".")
            if key == NOISE_KEY:
                noise = float(tensor)
            else:
                (view if kind == "view" else momentum)[dtype] = tensor.reshape(-1)
        self.plane.gather(self._model)
        self.plane.load(self._model, view or None, momentum, noise)


class ShardedTasks:
    """The sharded tasks of one Ray model store, and the shard servers they share."""

    def __init__(self, pool: ServerPool | None = None) -> None:
        self._requests: dict[str, ShardRequest] = {}
        self._planes: dict[str, ShardPlane] = {}
        self._pool = pool
        self._lock = threading.Lock()
        self.gathers = 0  # of the tasks cleared so far (figures for tests)
        self.pushes = 0

    def request(self, task_id: str, request: ShardRequest) -> None:
        with self._lock:
            self._requests[task_id] = request

    def install(self, task_id: str, layout: FlatLayout, model: Groups | Any) -> bool:
        """The task's model now exists (init, resume): put it on its shards, if sharded.
        `model` is full groups, or the ref of the flat buffer a function wrote (it then
        goes from the function's node straight to the shards). Returns whether the task
        is sharded."""
        with self._lock:
            request = self._requests.get(task_id)
            if request is None:
                return False
            if self._pool is None:
                self._pool = ServerPool()
            shards = request.shards
            if shards is None:  # one per node that runs functions; none on one node
                nodes = len(ServerPool.nodes())
                shards = nodes if nodes > 1 else 0
            if shards == 0:
                self._requests.pop(task_id)
                return False
            outer = OuterStep(request.outer_name, request.outer_lr, request.outer_momentum)
            old = self._planes.pop(task_id, None)
            plane = ShardPlane.create(task_id, layout, shards, outer, request.precision, self._pool)
        if old is not None:
            old.drop()
        if isinstance(model, dict):
            plane.load(model)
        else:
            plane.load_written(model)
        with self._lock:
            self._planes[task_id] = plane
        return True

    def plane(self, task_id: str) -> ShardPlane | None:
        with self._lock:
            return self._planes.get(task_id)

    def servers(self) -> list[tuple[str, int]]:
        """(node id, pid) of each shard server started so far (none before a sharded task)."""
        with self._lock:
            pool = self._pool
        return pool.where() if pool is not None else []

    def clear(self, task_id: str) -> None:
        with self._lock:
            self._requests.pop(task_id, None)
            plane = self._planes.pop(task_id, None)
            self.gathers += plane.gathers if plane is not None else 0
            self.pushes += plane.pushes if plane is not None else 0
        if plane is not None:
            plane.drop()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._planes.clear()
            self._requests.clear()
        if pool is not None:
            pool.close()
