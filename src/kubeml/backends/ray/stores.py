"""Stores for the Ray backend: datasets and weights reach functions through the object store.

Nothing here assumes a shared filesystem. The control plane keeps its stores as always
(datasets as files under the kubeml home, the reference model in its own memory, final
models as files) and hands functions *object refs*:

- a dataset is read by functions chunk by chunk from the node servers that hold the
  chunks (`kubeml.backends.ray.chunk_route`); the control plane answers only for a chunk
  no node holds yet;
- a function publishes its weights with `ray.put`; the ref is the `RoundReport.handle`,
  and the control plane fetches the buffer as soon as the report arrives (`prefetch`), so
  the merge finds it there;
- the merged reference model is `ray.put` once per round by the control plane and its
  ref travels back to every function with the round's release.

Models up to `INLINE_BYTES` skip both object-store round trips: the published buffer is
the report's handle itself and the reference travels by value in the release, so Ray
carries them inside the relay's messages. On one node that cut a bare round (K=1, next
to no compute) from about 24 to 7 ms; each explicit `ray.put` and `ray.get` cost a
function 2-3 ms (benchmarks/ray_vs_process.py --bare-rounds).

A sharded task (`sharded_tasks`) answers from its shards instead: a function gets a
`ShardRoute` for the reference and publishes a `ShardDeposit`, checkpoints and final
models gather from the shards.

The function side (`RemoteDatasetStore`, `RemoteModelStore`) asks the control plane for
refs through the relay: `ask(request)` sends one of the typed requests below as a
`relay.Request` and blocks for the answer. Imported only by `kubeml.backends.ray`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.exceptions import RayError

from kubeml.api.datasets import DatasetInfo
from kubeml.backends.ray.chunk_route import ChunkRoute, WantChunk, WantChunkRoute
from kubeml.backends.ray.server_pool import ServerPool
from kubeml.backends.ray.shard_plane import ShardDeposit, ShardRoute
from kubeml.backends.ray.sharded_tasks import ShardedMerge, ShardedTasks
from kubeml.errors import BackendError, NotFoundError, StorageError
from kubeml.stores.datasets import DatasetStore, LocalDatasetStore, StagedDataset
from kubeml.stores.flat import FlatLayout
from kubeml.stores.interfaces import (
    ControlModels,
    Groups,
    RemoteMerge,
    ShardRequest,
    Split,
)
from kubeml.stores.models import FinalModelFiles
from kubeml.stores.sources import SourceSplit

if TYPE_CHECKING:
    import torch

# Weights up to this size travel by value in the relay's messages, larger ones by object ref
# (put once a round for all N functions).
INLINE_BYTES = 4 * 2**20

Ask = Callable[[Any], Any]  # ask(request) -> the control plane's answer (or raises its error)
ReferenceRef = tuple[FlatLayout, Any]  # the buffer, or its object ref


# -- what a function asks the control plane for -------------------------------------------
@dataclass(frozen=True)
class WantReference:
    task_id: str
    repair: bool = False  # a sharded task: replace shard servers that do not answer


@dataclass(frozen=True)
class AdoptReference:
    """Init wrote the first reference; the control plane takes a copy of it."""

    task_id: str
    layout: FlatLayout
    ref: Any


@dataclass(frozen=True)
class WantFinal:
    task_id: str


def answer(datasets: RayDatasetStore, models: RayModelStore, request: Any) -> Any:
    """The control plane's answer to a function's request (the relay's `Request.what`)."""
    if isinstance(request, WantReference):
        return models.reference_for_function(request.task_id, request.repair)
    if isinstance(request, AdoptReference):
        models.adopt_reference(request.task_id, request.layout, request.ref)
        return None
    if isinstance(request, WantChunkRoute):
        return datasets.chunk_route(request.name, request.split)  # type: ignore[arg-type]
    if isinstance(request, WantChunk):
        return datasets.chunk(request)
    if isinstance(request, WantFinal):
        return models.final_ref(request.task_id)
    raise BackendError(f"unknown request {type(request).__name__} from a Ray function")


def _flatten(layout: FlatLayout, state: dict[str, torch.Tensor], out: np.ndarray) -> np.ndarray:
    layout.flatten_into(state, layout.over(out))
    return out


# -- control plane side ------------------------------------------------------------------------
class RayDatasetStore(DatasetStore):
    """The control plane's datasets (files under the home), read by functions chunk by
    chunk from the nodes that hold them (`kubeml.backends.ray.chunk_route`)."""

    def __init__(self, local: LocalDatasetStore, pool: ServerPool | None = None) -> None:
        self.local = local
        self._pool = pool
        self.chunks_read = 0  # chunks read from the home for functions (a figure for tests)
        self._lock = threading.Lock()

    def create(self, name: str, arrays: dict[str, np.ndarray]) -> DatasetInfo:
        return self.local.create(name, arrays)

    def get(self, name: str) -> DatasetInfo:
        return self.local.get(name)

    def list(self) -> list[DatasetInfo]:
        return self.local.list()

    def stage(self) -> StagedDataset:
        return self.local.stage()

    def register(self, name: str, url: str) -> DatasetInfo:
        return self.local.register(name, url)

    def damaged(self) -> Sequence[str]:
        return self.local.damaged()

    def delete(self, name: str) -> None:
        self.local.delete(name)
        with self._lock:
            pool = self._pool
        if pool is not None:
            for server in pool.servers(0, started=True):
                with contextlib.suppress(RayError):
                    server.drop_dataset.remote(name)

    def read(
        self, name: str, split: Split, ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.local.read(name, split, ranges)

    def chunk_route(self, name: str, split: Split) -> ChunkRoute | SourceSplit:
        """Where the split's chunks live (the node servers, started on first use); for a
        registered dataset, its location, which the function reads itself."""
        info = self.local.get(name)
        registered = self.local.source_split(name, split)
        if registered is not None:
            return registered
        with self._lock:
            if self._pool is None:
                self._pool = ServerPool()
            pool = self._pool
        samples = info.train_size if split == "train" else info.test_size
        return ChunkRoute(
            info.created_at.isoformat(), samples, self.chunk_samples(name), tuple(pool.per_node())
        )

    def chunk_samples(self, name: str) -> int:
        """Samples per chunk: the stored chunks' (`kubeml.stores.chunks`)."""
        return self.local.chunk_samples(name)

    def chunk(self, request: WantChunk) -> tuple[np.ndarray, np.ndarray]:
        """A chunk's samples, read from the home (`chunk` -1: none, of the right shapes)."""
        info = self.local.get(request.name)
        if info.created_at.isoformat() != request.version:
            raise NotFoundError(f"dataset {request.name!r} changed while a task read it")
        # The chunk's bounds, without the route's node lookup.
        samples = info.train_size if request.split == "train" else info.test_size
        route = ChunkRoute(request.version, samples, self.chunk_samples(request.name), ())
        bounds = [route.bounds(request.chunk)] if request.chunk >= 0 else [(0, 0)]
        with self._lock:
            self.chunks_read += request.chunk >= 0
        return self.local.read(request.name, request.split, bounds)  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


@dataclass
class _Reference:
    layout: FlatLayout
    buffer: np.ndarray  # writable; the merge writes here
    groups: Groups
    ref: Any = None  # its object-store copy, None while stale


class RayModelStore(ControlModels):
    """The control plane's weights: references in memory, published weights as object refs,
    final models as files under the home (as in `LocalModelStore`)."""

    def __init__(self, models_dir: Path, pool: ServerPool | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.finals = FinalModelFiles(self.models_dir)
        self._references: dict[str, _Reference] = {}
        self._fetched: dict[tuple[str, int], tuple[str, np.ndarray]] = {}  # see `prefetch`
        self.sharded = ShardedTasks(pool)
        self._lock = threading.Lock()

    def _reference(self, task_id: str) -> _Reference:
        reference = self._references.get(task_id)
        if reference is None:
            raise NotFoundError(f"task {task_id!r} has no reference model yet")
        return reference

    def _install(self, task_id: str, layout: FlatLayout, buffer: np.ndarray) -> None:
        reference = _Reference(layout, buffer, layout.over(buffer))
        with self._lock:
            self._references[task_id] = reference
        self.sharded.install(task_id, layout, reference.groups)

    # -- sharded tasks (`kubeml.backends.ray.sharded_tasks`) --------------------------------
    def request_shards(self, task_id: str, request: ShardRequest) -> None:
        self.sharded.request(task_id, request)

    def remote_merge(self, task_id: str) -> RemoteMerge | None:
        plane = self.sharded.plane(task_id)
        if plane is None:
            return None
        return ShardedMerge(plane, self._reference(task_id).groups)

    def adopt_reference(self, task_id: str, layout: FlatLayout, ref: Any) -> None:
        """Take the reference a function wrote (init): a sharded task's goes from the
        function's node to its shards (the control plane gathers it from there when it
        needs it), any other's into the control plane's memory.

        The copy is ours: the function's object dies with its actor, and the next ref
        handed out is put by the control plane, which outlives every node.
        """
        buffer = np.zeros(layout.nbytes, np.uint8)  # filled by the first gather, if sharded
        if not self.sharded.install(task_id, layout, ref):
            buffer[:] = ray.get(ref)
        reference = _Reference(layout, buffer, layout.over(buffer))
        with self._lock:
            self._references[task_id] = reference

    def reference_ref(self, task_id: str) -> ReferenceRef:
        """The current reference model in the object store; put at most once per change."""
        with self._lock:
            reference = self._reference(task_id)
            if reference.ref is None:
                reference.ref = ray.put(reference.buffer)
            return reference.layout, reference.ref

    def reference_for_function(
        self, task_id: str, repair: bool = False
    ) -> ReferenceRef | ShardRoute:
        """The reference as a function receives it (with a release, or asked for): a small
        one by value (serialised by the `.remote()` call that sends it, before the next
        merge can change it), a large one by ref; for a sharded task, where its shards are."""
        plane = self.sharded.plane(task_id)
        if plane is not None:
            if repair:
                plane.repair()
            return plane.route()
        with self._lock:
            reference = self._reference(task_id)
            if reference.layout.nbytes <= INLINE_BYTES:
                return reference.layout, reference.buffer
        return self.reference_ref(task_id)

    def final_ref(self, task_id: str) -> Any:
        return ray.put(self.load_final(task_id))

    # -- parameter-server side --------------------------------------------------------------
    def write_reference(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        layout = FlatLayout.from_state(state)
        self._install(task_id, layout, _flatten(layout, state, np.zeros(layout.nbytes, np.uint8)))

    def layout(self, task_id: str) -> FlatLayout:
        return self._reference(task_id).layout

    def prefetch(self, task_id: str, func_id: int, handle: Any) -> None:
        """Fetch published weights as soon as they are announced, while the round waits
        for slower functions, so the merge finds all but the last one here already."""
        if isinstance(handle, np.ndarray | ShardDeposit):
            return  # sent by value with the report, or deposited at the shards
        buffer = self._fetch(task_id, func_id, handle)
        with self._lock:
            self._fetched[(task_id, func_id)] = (handle.hex(), buffer)

    def _fetch(self, task_id: str, func_id: int, handle: Any) -> np.ndarray:
        if handle is None:
            raise StorageError(f"function {func_id} of task {task_id!r} published no object ref")
        try:
            return ray.get(handle)
        except ray.exceptions.RayError as exc:
            raise StorageError(
                f"the weights function {func_id} of task {task_id!r} published are lost "
                f"(its node left the cluster?): {type(exc).__name__}"
            ) from exc

    def published_groups(self, task_id: str, func_id: int, handle: Any) -> Groups:
        if isinstance(handle, np.ndarray):
            return self.layout(task_id).over(handle)
        with self._lock:
            fetched = self._fetched.pop((task_id, func_id), None)
        if fetched is not None and handle is not None and fetched[0] == handle.hex():
            buffer = fetched[1]
        else:
            buffer = self._fetch(task_id, func_id, handle)
        return self.layout(task_id).over(buffer)

    def reference_groups(self, task_id: str) -> Groups:
        with self._lock:
            reference = self._reference(task_id)
            reference.ref = None  # handed out writable: the merge is about to change it
        plane = self.sharded.plane(task_id)
        if plane is not None:  # a checkpoint, an epoch's end: the model from its shards
            plane.gather(reference.groups)  # once per merged round (the epoch's end asks twice)
        return reference.groups

    def clear_task(self, task_id: str) -> None:
        with self._lock:
            self._references.pop(task_id, None)
            for key in [k for k in self._fetched if k[0] == task_id]:
                del self._fetched[key]
        self.sharded.clear(task_id)

    def close(self) -> None:
        with self._lock:
            self._references.clear()
            self._fetched.clear()
        self.sharded.close()

    # -- durable models -----------------------------------------------------------------
    def save_final(self, task_id: str) -> None:
        reference = self._reference(task_id)
        self.finals.save(task_id, reference.layout.views(self.reference_groups(task_id)))

    def load_final(self, task_id: str) -> dict[str, torch.Tensor]:
        return self.finals.load(task_id)

    def has_final(self, task_id: str) -> bool:
        return self.finals.exists(task_id)

    def final_version(self, task_id: str) -> str | None:
        return self.finals.version(task_id)

    def delete_final(self, task_id: str) -> None:
        self.finals.delete(task_id)
