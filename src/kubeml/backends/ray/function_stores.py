"""The function side of the Ray stores (inside a Ray actor, on any node): datasets from the
object store, the reference by value or ref (or a sharded task's weights, from its
shards), publishing by value, `ray.put`, or a deposit at the shards. The control plane's
side, and the requests a function sends it, are in `kubeml.backends.ray.stores`."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import ray

from kubeml.backends.ray.chunk_route import ChunkReader
from kubeml.backends.ray.shard_client import ShardedWeights
from kubeml.backends.ray.shard_plane import ShardRoute
from kubeml.backends.ray.stores import (
    INLINE_BYTES,
    AdoptReference,
    Ask,
    ReferenceRef,
    WantFinal,
    WantReference,
    _flatten,
)
from kubeml.stores.flat import FlatLayout
from kubeml.stores.interfaces import (
    EagerWeights,
    FunctionModels,
    FunctionStates,
    InitialBuild,
    ShardSource,
    Split,
)

if TYPE_CHECKING:
    import torch


class RemoteDatasetStore(ShardSource):
    """A function's view of the datasets: `read` only, chunk by chunk from the nodes that
    hold them (`kubeml.backends.ray.chunk_route`)."""

    def __init__(self, ask: Ask) -> None:
        self._reader = ChunkReader(ask)
        self._task_id: str | None = None

    def read(
        self, name: str, split: Split, ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._reader.read(name, split, ranges)

    def begin(self, task_id: str) -> None:
        """A new task on this warm actor: drop the chunks the last one read."""
        if task_id != self._task_id:
            self._reader.forget()
            self._task_id = task_id


class ActorStates(FunctionStates):
    """The optimizer states a lane carries into its next epoch, in the actor's memory: the
    backend gives a task's next epoch's lane to the actor that trained it (`RayBackend`).
    Only those are kept; a round's state is not, so a replayed round (on a fresh actor)
    starts a fresh optimizer, as a lane that lands on another actor does."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}

    def save(
        self, task_id: str, func_id: int, epoch: int, round_index: int, state: dict[str, Any]
    ) -> None:
        if round_index == 0:
            self._kept[(task_id, func_id)] = (epoch, copy.deepcopy(state))

    def load(
        self, task_id: str, func_id: int, epoch: int, round_index: int
    ) -> dict[str, Any] | None:
        kept = self._kept.get((task_id, func_id))
        if round_index != 0 or kept is None or kept[0] != epoch:
            return None
        return copy.deepcopy(kept[1])  # the optimizer it goes into steps in place

    def begin(self, task_id: str) -> None:
        """Other tasks' states are not needed here any more."""
        self._kept = {key: kept for key, kept in self._kept.items() if key[0] == task_id}


class RemoteModelStore(FunctionModels):
    """A function's view of the weights: the reference by value or ref, publishing by value
    or with `ray.put`."""

    def __init__(self, ask: Ask) -> None:
        self._ask = ask
        self._references: dict[str, ReferenceRef | ShardRoute] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self._sharded: dict[str, ShardedWeights] = {}
        self._states = self.states = ActorStates()

    def begin(self, task_id: str) -> None:
        """A new invocation: the reference may have moved on since the last one, and other
        tasks' state is no longer needed here."""
        self._references.clear()
        self._states.begin(task_id)
        for other in [t for t in self._scratch if t != task_id]:
            del self._scratch[other]
        self._sharded = {t: w for t, w in self._sharded.items() if t == task_id}
        for weights in self._sharded.values():
            weights.forget()

    def _weights(self, task_id: str) -> ShardedWeights | None:
        """The task's weights on this actor, if the task is sharded."""
        weights = self._sharded.get(task_id)
        if weights is None:
            current = self._current(task_id)
            if not isinstance(current, ShardRoute):
                return None

            def route(repair: bool) -> ShardRoute:
                answer = self._ask(WantReference(task_id, repair))
                assert isinstance(answer, ShardRoute)
                return answer

            weights = self._sharded[task_id] = ShardedWeights(task_id, current, route)
        return weights

    def receive_reference(self, task_id: str, reference: ReferenceRef) -> None:
        """The merged reference of the round just released (sent with the release)."""
        self._references[task_id] = reference

    def _current(self, task_id: str) -> ReferenceRef | ShardRoute:
        current = self._references.get(task_id)
        if current is None:
            current = self._references[task_id] = self._ask(WantReference(task_id))
        return current

    def write_reference(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        layout = FlatLayout.from_state(state)
        buffer = _flatten(layout, state, np.zeros(layout.nbytes, np.uint8))
        self._ask(AdoptReference(task_id, layout, ray.put(buffer)))

    def load_reference_into(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        weights = self._weights(task_id)
        if weights is not None:
            weights.load_into(state)
            return
        layout, ref = cast("ReferenceRef", self._current(task_id))
        buffer = ref if isinstance(ref, np.ndarray) else cast("np.ndarray", ray.get(ref))
        layout.unflatten_into(layout.over(buffer), state)

    def adopt_initial(self, task_id: str, build: InitialBuild) -> bool:
        weights = self._weights(task_id)
        if weights is None:
            return False  # the central merge: the reference comes from the control plane
        state = build()
        return state is not None and weights.adopt(state)

    def eager(self, task_id: str) -> EagerWeights | None:
        return self._weights(task_id)

    def load_model_into(self, task_id: str, state: dict[str, torch.Tensor]) -> None:
        weights = self._weights(task_id)
        if weights is not None:
            weights.model_into(state)
        else:
            self.load_reference_into(task_id, state)

    def publish(self, task_id: str, func_id: int, state: dict[str, torch.Tensor]) -> Any:
        weights = self._weights(task_id)
        if weights is not None:
            return weights.publish(state)
        layout = cast("ReferenceRef", self._current(task_id))[0]
        if layout.nbytes <= INLINE_BYTES:  # travels by value with the round report
            return _flatten(layout, state, np.empty(layout.nbytes, np.uint8))
        scratch = self._scratch.get(task_id)
        if scratch is None or scratch.nbytes != layout.nbytes:
            scratch = self._scratch[task_id] = np.zeros(layout.nbytes, np.uint8)
        return ray.put(_flatten(layout, state, scratch))  # put copies: scratch is reusable

    def load_final(self, task_id: str) -> dict[str, torch.Tensor]:
        return cast("dict[str, torch.Tensor]", ray.get(self._ask(WantFinal(task_id))))
