"""What runs on each Ray node beside the functions: `ShardServer`, an actor holding
shards of the tasks' models (`kubeml.stores.shard_core`), each as a primary (merging
the functions' deposits) or as the replica of another server's primary, and the dataset
chunks whose home the node is (`kubeml.backends.ray.chunk_route`).

A primary's step is not finished until its replica holds the same one (`merge`, `finish`
call the replica's `replicate` and wait for it to keep the step, which the replica takes
in a thread of its own, or before anything reads the replica: `_held`), so a server lost
at any moment leaves every shard it held as the last merged round left it on another
server. Threaded (Ray's
`max_concurrency`): a primary waiting for its replica must not block the replica's own
primary on the same server. Ray does the transport: deposits and updates are numpy
arrays in Ray's object store, moved between the nodes that hold them.

A task's first model is *awaited* (`expect`): a function on this node that built the same
piece (the user's init again, `ShardedWeights.adopt`) hands it over (`offer`), so the
model crosses no link; the first call that needs an awaited shard fetches it from where
the writer's node cut it (`_held`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import ray
import torch

from kubeml.backends.ray.chunk_route import Arrays, ChunkCache, ChunkKey
from kubeml.stores.flat import FlatLayout
from kubeml.stores.outer_rule import RoundSums, StepTerms
from kubeml.stores.shard_core import Payload, ShardCore, piece_digest, step_message
from kubeml.stores.shard_plan import ShardSpec, slice_groups

Key = tuple[str, int]  # (task id, shard index)
# A first model not taken yet: its spec, digest, [the ref of its cut state], the buddy.
Awaited = tuple[ShardSpec, bytes, list[Any], Any]
CONCURRENCY = 16


class ShardServer:
    """Shards of task models on one node (used as `ray.remote(ShardServer)`)."""

    def __init__(self, chunk_budget_bytes: int = 0) -> None:
        torch.set_num_threads(1)  # beside a function that owns the node's CPUs
        self._chunks = ChunkCache(chunk_budget_bytes)
        self._primaries: dict[Key, ShardCore] = {}
        self._replicas: dict[Key, ShardCore] = {}
        self._buddies: dict[Key, Any] = {}  # the server holding each primary's replica
        self._locks: dict[Key, threading.Lock] = {}
        self._snapshots: dict[Key, dict[str, Any]] = {}  # kept for a checkpoint, until taken
        self._sending: dict[Key, Any] = {}  # a primary's reduced change on its way (a ref)
        self._incoming: dict[Key, Payload] = {}  # a replica's change, until the step's call
        self._steps: dict[Key, Payload] = {}  # a replica's step, kept until it is taken
        self.views_served = 0  # whole views read by functions (a fresh one, or a lost round)
        # First models, by (task, shard, replica), until a function offers or a call fetches.
        self._awaited: dict[tuple[str, int, bool], Awaited] = {}
        self.first_fetched = 0  # first models fetched from the writer's node, not offered
        self._guard = threading.Lock()

    def where(self) -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- set-up --------------------------------------------------------------------------
    def hold(self, task_id: str, spec: ShardSpec, state: dict[str, Any], buddy: Any) -> None:
        """Hold shard `spec.index` of `task_id` as its primary, from `state`
        (`ShardCore.state`), with its replica on `buddy` (None: no replica)."""
        key = (task_id, spec.index)
        with self._lock(key):
            self._awaited.pop((*key, False), None)
            self._primaries[key] = ShardCore.from_state(spec, state)
            self._buddies[key] = buddy

    def expect(
        self, task_id: str, spec: ShardSpec, digest: bytes, refs: list[Any], buddy: Any,
        replica: bool = False,
    ) -> None:  # fmt: skip
        """Await shard `spec.index`'s first model (as its primary, or `replica`): offered by
        a function here, or fetched from `refs[0]` when first needed."""
        key = (task_id, spec.index)
        with self._lock(key):
            self._awaited[(*key, replica)] = (spec, digest, refs, buddy)

    def offer(self, task_id: str, index: int, pieces: Payload, replica: bool) -> bool:
        """A function on this node built the task's first model: take its piece of an
        awaited shard if it is the same bits."""
        key = (task_id, index)
        with self._lock(key):
            awaited = self._awaited.get((*key, replica))
            if awaited is None:
                return False
            spec = awaited[0]
            master = {d: torch.from_numpy(np.array(p)) for d, p in pieces.items()}
            named = {d for d, _, _ in spec.ranges}
            if set(master) != named or piece_digest(spec, master) != awaited[1]:
                return False
            self._take(key, replica, {"master": master, "view": {}, "momentum": {}, "merged": 0})
            return True

    def _held(self, key: Key, replica: bool = False) -> ShardCore:
        """The shard's core (under its lock), its first model fetched if still awaited."""
        if (*key, replica) in self._awaited:
            ref = self._awaited[(*key, replica)][2][0]
            self._take(key, replica, cast("dict[str, Any]", ray.get(ref)))
            with self._guard:
                self.first_fetched += 1
        if replica and key in self._steps:  # a step kept (`replicate`), not yet taken
            self._replicas[key].replicate(self._steps.pop(key))
        return (self._replicas if replica else self._primaries)[key]

    def _take(self, key: Key, replica: bool, state: dict[str, Any]) -> None:
        spec, _, _, buddy = self._awaited.pop((*key, replica))
        if replica:
            self._replicas[key] = ShardCore.from_state(spec, state)
        else:
            self._primaries[key] = ShardCore.from_state(spec, state)
            self._buddies[key] = buddy

    def fetched(self) -> int:
        """First models fetched rather than offered (tests: none, where functions built it)."""
        return self.first_fetched

    def hold_from(self, task_id: str, spec: ShardSpec, refs: list[Any], buddy: Any) -> None:
        """`hold` the state in `refs[0]` (a ref in a list: Ray passes it unresolved), then
        have the replica on `buddy` take a copy put on this node: the state crosses its
        sender's link once, and the copy for the replica leaves from here."""
        state = ray.get(refs[0])
        self.hold(task_id, spec, state, buddy)
        if buddy is not None:
            ray.get(buddy.hold_replica.remote(task_id, spec, ray.put(state)))

    def cut(self, buffer: np.ndarray, layout: FlatLayout, specs: Sequence[ShardSpec]) -> Any:
        """Each shard's starting state (`ShardCore.state`) from a model a function on this
        node wrote (a flat buffer, read from the node's object store), then each one's
        `piece_digest`: 2·S return values, the states kept on this node, so a shard whose
        node's functions do not build the same model fetches only its piece, from here."""
        groups = layout.over(buffer)
        states, digests = [], []
        for spec in specs:
            master = {d: piece.clone() for d, piece in slice_groups(spec, groups).items()}
            states.append({"master": master, "view": {}, "momentum": {}, "merged": 0})
            digests.append(piece_digest(spec, master))
        return (*states, *digests)

    def set_buddy(self, task_id: str, index: int, buddy: Any) -> None:
        key = (task_id, index)
        with self._lock(key):
            self._buddies[key] = buddy

    def hold_replica(self, task_id: str, spec: ShardSpec, state: dict[str, Any]) -> None:
        key = (task_id, spec.index)
        with self._lock(key):
            self._awaited.pop((*key, True), None)
            self._steps.pop(key, None)  # the state holds every step its primary took
            self._replicas[key] = ShardCore.from_state(spec, state)

    def state(self, task_id: str, index: int, replica: bool = False) -> dict[str, Any]:
        """Everything the shard holds after its last merged round (a checkpoint, a new
        replica, or the primary a replica stands in for)."""
        key = (task_id, index)
        with self._lock(key):
            return self._held(key, replica).state()

    def outer(self, task_id: str, index: int) -> dict[str, Any]:
        """The shard's outer momentum and functions' view (a checkpoint's outer state)."""
        key = (task_id, index)
        with self._lock(key):
            return self._held(key).outer()

    def snapshot(self, task_id: str, index: int) -> None:
        """Keep a copy of the shard as its last merged round left it, for a checkpoint that
        gathers it (`taken`) while the next rounds run."""
        key = (task_id, index)
        with self._lock(key):
            self._snapshots[key] = self._held(key).state()

    def taken(self, task_id: str, index: int) -> dict[str, Any] | None:
        """The snapshot kept last (None: none, e.g. this server replaced the one that took it)."""
        key = (task_id, index)
        with self._lock(key):
            return self._snapshots.pop(key, None)

    def drop(self, task_id: str) -> None:
        with self._guard:
            held_by_task: tuple[dict[Any, Any], ...] = (
                self._primaries, self._replicas, self._buddies, self._snapshots,
                self._sending, self._incoming, self._awaited, self._steps,
            )  # fmt: skip
            for held in (*held_by_task, self._locks):
                for key in [k for k in held if k[0] == task_id]:
                    del held[key]

    # -- a round -------------------------------------------------------------------------
    def deposit(self, task_id: str, index: int, token: bytes, payload: Payload) -> int:
        """A function's change for the open round; returns the rounds merged so far."""
        key = (task_id, index)
        with self._lock(key):
            core = self._held(key)
            core.deposit(token, payload)
            return core.merged

    def merge(
        self,
        task_id: str,
        index: int,
        contributions: Sequence[tuple[bytes, int]],
        terms: StepTerms | None,
        settle: bool = False,
    ) -> RoundSums:
        """Reduce the listed deposits; with `terms` (a step that needs no sums over every
        shard) also take the step and have the replica take it."""
        key = (task_id, index)
        with self._lock(key):
            core = self._held(key)
            sums = core.reduce(contributions)
            buddy = self._buddies.get(key)
            if buddy is not None:  # on its way while the sums go round and this one steps
                self._sending[key] = buddy.take_change.remote(task_id, index, core.round_change())
            if terms is not None:
                self._finish(key, core, terms, settle)
            return sums

    def finish(self, task_id: str, index: int, terms: StepTerms, settle: bool = False) -> None:
        key = (task_id, index)
        with self._lock(key):
            self._finish(key, self._held(key), terms, settle)

    def _finish(self, key: Key, core: ShardCore, terms: StepTerms, settle: bool) -> None:
        message = core.finish(terms, settle)
        buddy = self._buddies.get(key)
        if buddy is None:
            return
        sending = self._sending.pop(key, None)
        if sending is not None:  # the change went ahead (`merge`): the step's terms alone
            ray.get(sending)
            message = {**step_message(terms), "settle": message["settle"]}
        ray.get(buddy.replicate.remote(key[0], key[1], message))

    def take_change(self, task_id: str, index: int, change: Payload) -> None:
        """A replica's part of its primary's round, sent as soon as the primary reduced it
        (`merge`); the step takes it (`replicate`)."""
        key = (task_id, index)
        with self._lock(key):
            self._incoming[key] = change

    def replicate(self, task_id: str, index: int, message: Payload) -> None:
        """Keep the step the primary took (`message`: its terms, and the change unless it
        came ahead: `take_change`) and answer at once: the round is safe once the step is
        kept here. It is taken in a thread, or first by any call that reads the replica."""
        key = (task_id, index)
        with self._lock(key):
            self._held(key, True)  # an earlier step first
            self._steps[key] = {**self._incoming.pop(key, {}), **message}
        threading.Thread(target=self._take_step, args=(key,), daemon=True).start()

    def _take_step(self, key: Key) -> None:
        with self._lock(key):
            if key in self._steps:  # (gone: taken already, or the task dropped)
                self._held(key, True)

    def rollback(self, task_id: str, index: int, merged: int) -> None:
        """Undo round `merged` on the primary and the replica held here, if they took it."""
        key = (task_id, index)
        with self._lock(key):
            if key in self._steps:  # a step kept: taken, then undone
                self._held(key, True)
            for held in (self._primaries, self._replicas):
                if key in held:
                    held[key].rollback(merged)

    def update(self, task_id: str, index: int, token: bytes) -> Payload | None:
        key = (task_id, index)
        with self._lock(key):
            return self._held(key).update(token)

    def holds(self, task_id: str, index: int, token: bytes) -> bool:
        """Whether `token`'s round is still the shard's last merged one."""
        key = (task_id, index)
        with self._lock(key):
            return self._held(key).update(token) is not None

    def functions_view(self, task_id: str, index: int) -> tuple[int, Payload]:
        key = (task_id, index)
        with self._lock(key):
            core = self._held(key)
            with self._guard:
                self.views_served += 1
            return core.merged, core.functions_view()

    def served(self) -> int:
        """How many whole views functions read here (tests: an epoch starts without one)."""
        return self.views_served

    def digest(self, task_id: str, index: int) -> tuple[int, bytes]:
        """The rounds merged, and `ShardCore.digest` (a function built the model itself);
        an awaited first model's digest without fetching it."""
        key = (task_id, index)
        with self._lock(key):
            awaited = self._awaited.get((*key, False))
            if awaited is not None:
                return 0, awaited[1]
            core = self._held(key)
            return core.merged, core.digest()

    def model(self, task_id: str, index: int) -> Payload:
        key = (task_id, index)
        with self._lock(key):
            return self._held(key).model()

    def ping(self) -> bool:
        return True

    # -- dataset chunks whose home this node is (`kubeml.backends.ray.chunk_route`) ---------
    def chunk(self, key: ChunkKey) -> Arrays | None:
        with self._guard:
            return self._chunks.get(key)

    def keep_chunk(self, key: ChunkKey, x: np.ndarray, y: np.ndarray) -> None:
        with self._guard:
            self._chunks.keep(key, x, y)

    def drop_dataset(self, name: str) -> None:
        with self._guard:
            self._chunks.drop(name)

    def chunk_bytes(self) -> int:
        with self._guard:
            return self._chunks.bytes
