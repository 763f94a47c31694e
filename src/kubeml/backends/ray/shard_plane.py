"""The control plane's side of a sharded parameter server: where a task's shards are,
each round's merge as a few small messages, and the repair of a lost shard server.

Per round the control plane sends each shard the list of (token, samples) of the
functions that reported, and receives four floats per shard (`adaptive`'s sums) and an
acknowledgement: no weight bytes. Weights cross its link only when a task resumes (the
checkpoint pushed to the shards), at checkpoints and after the last epoch (the model, and
the outer optimizer's state, gathered from them). A task's first model goes from the
function that wrote it straight to the shards, cut on its node (`load_written`).

A shard server lost during a round (its node left, its actor was killed) costs that
round: the servers it held are replaced on live nodes, each of its shards restored from
its replica on another server (and each replica it held copied again from its primary),
every shard that took the round's step rolls it back, and the merge raises
`RoundLostError`: the job trains the round again from the same model, as after a stop
at that round.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from kubeml.backends.ray.server_pool import PING_S, ServerPool
from kubeml.errors import KubeMLError, RoundLostError, StorageError
from kubeml.runtime.sync import RoundReport
from kubeml.stores.flat import FlatLayout
from kubeml.stores.interfaces import Groups
from kubeml.stores.outer_rule import StepTerms, adaptive_step, noise_state, total, weights_sq
from kubeml.stores.shard_plan import OuterStep, ShardSpec, plan_shards, slice_groups

# A shard that has not answered a round's merge (or a function's deposit) in this long is
# lost: a node cut off without Ray noticing must cost a round, not hang the task.
CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ShardDeposit:
    """A function's round report handle on a sharded task: the token its change was
    deposited under at every shard, or `ok=False` if a shard could not be reached."""

    token: bytes
    ok: bool = True


@dataclass(frozen=True)
class ShardRoute:
    """What a function needs to reach a task's shards (the answer to `WantReference`)."""

    layout: FlatLayout
    specs: tuple[ShardSpec, ...]
    servers: tuple[Any, ...]  # the primary of shard i is servers[i]
    precision: str
    replicas: tuple[Any, ...] = ()  # the server holding shard i's replica
    nodes: tuple[str, ...] = ()  # the node of each primary's server ("": unknown)
    replica_nodes: tuple[str, ...] = ()


def new_token() -> bytes:
    return secrets.token_bytes(16)


class ShardPlane:
    """One task's shards: primaries on `servers[i]`, replicas on `servers[i + 1]`."""

    def __init__(
        self,
        task_id: str,
        layout: FlatLayout,
        specs: Sequence[ShardSpec],
        pool: ServerPool,
    ) -> None:
        self.task_id, self.layout, self.specs, self.pool = task_id, layout, list(specs), pool
        count = len(self.specs) + (1 if len(self.specs) == 1 else 0)  # a replica elsewhere
        self.servers = pool.servers(count)
        self.merged = 0
        self._gathered: tuple[int, int] | None = None  # (merged, id of the groups) last gathered
        self.gathers = 0  # the model's or the outer state's trips to the control plane
        self.pushes = 0  # the model's trips from the control plane (`load`)
        self.cut_near: bool | None = None  # `load_written`: cut on the writer's node
        self.noise: float | None = None  # `adaptive`: the smoothed noise share (`outer_rule`)
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        task_id: str,
        layout: FlatLayout,
        shards: int,
        outer: OuterStep,
        precision: str,
        pool: ServerPool,
    ) -> ShardPlane:
        return cls(task_id, layout, plan_shards(layout, shards, outer, precision), pool)

    @property
    def precision(self) -> str:
        return self.specs[0].precision

    def _buddy(self, index: int) -> int:
        return (index + 1) % len(self.servers)

    def route(self) -> ShardRoute:
        with self._lock:
            servers = tuple(self.servers[s.index] for s in self.specs)
            replicas = tuple(self.servers[self._buddy(s.index)] for s in self.specs)
            node_of = {id(h): n for n, h in self.pool.placed(self.servers)}
            return ShardRoute(
                self.layout, tuple(self.specs), servers, self.precision, replicas,
                tuple(node_of.get(id(h), "") for h in servers),
                tuple(node_of.get(id(h), "") for h in replicas),
            )  # fmt: skip

    # -- state in and out ----------------------------------------------------------------
    def load(
        self,
        model: Groups,
        view: Groups | None = None,
        momentum: Groups | None = None,
        noise: float | None = None,
    ) -> None:
        """Put a model (and the functions' view, the outer momentum and the adaptive step's
        noise share, resuming) on the shards and their replicas; the next round is the
        plane's first."""
        states = [
            ray.put(
                {
                    "master": _slice_present(spec, model),
                    "view": _slice_present(spec, view or {}),
                    "momentum": _slice_present(spec, momentum or {}),
                    "merged": 0,
                }
            )
            for spec in self.specs
        ]
        self._hold(states)
        self.noise = noise
        self.pushes += 1

    def load_written(self, buffer: Any) -> None:
        """Announce the model a function just wrote (`buffer`: the ref of its flat buffer,
        in its node's object store) to the shards, cut on that node by its server: each
        shard's primary and replica await it, taken from a function on their node that
        builds the same piece, else fetched from the cut (`ShardServer.expect`). None of it
        crosses the control plane's link (`load` would take it in and out again)."""
        where = ray.experimental.get_object_locations([buffer], timeout_ms=10_000).get(buffer, {})
        nodes = set(where.get("node_ids") or [])
        with self._lock:
            cutter = next((h for n, h in self.pool.placed(self.servers) if n in nodes), None)
            self.cut_near = cutter is not None
            cutter = cutter or self.servers[0]  # no server there: one fetches it all
            count = len(self.specs)
            cut = cutter.cut.options(num_returns=2 * count).remote(buffer, self.layout, self.specs)
            digests = self._wait(list(cut[count:]), "cutting the model for its shards")
            calls = []
            for spec, state, digest in zip(self.specs, cut[:count], digests, strict=True):
                primary, buddy = self.servers[spec.index], self.servers[self._buddy(spec.index)]
                calls.append(primary.expect.remote(self.task_id, spec, digest, [state], buddy))
                calls.append(buddy.expect.remote(self.task_id, spec, digest, [state], None, True))
            self._wait(calls, "announcing the model to its shards")
            self.merged, self.noise = 0, None
            self._gathered = None

    def _hold(self, states: Sequence[Any]) -> None:
        """Each shard's primary takes its state (refs, one per spec) and hands its replica a
        copy: the sender's link carries each piece once."""
        with self._lock:
            calls = []
            for spec, ref in zip(self.specs, states, strict=True):
                primary, buddy = self.servers[spec.index], self.servers[self._buddy(spec.index)]
                calls.append(primary.hold_from.remote(self.task_id, spec, [ref], buddy))
            self._wait(calls, "loading the model onto its shards")
            self.merged = 0
            self._gathered = None

    def gather(self, into: Groups) -> None:
        """The model, from every shard, into full flat groups (not again into the same
        groups before another round merged: they hold it already)."""
        with self._lock:
            if self._gathered == (self.merged, id(into)):
                return
            refs = [self.servers[s.index].model.remote(self.task_id, s.index) for s in self.specs]
            parts = self._wait(refs, "gathering the model from its shards")
            for spec, part in zip(self.specs, parts, strict=True):
                for dtype, a, b in spec.ranges:
                    into[dtype][a:b].copy_(torch.from_numpy(np.array(part[dtype])))
            self._gathered = (self.merged, id(into))
            self.gathers += 1

    def outer_state(self) -> dict[str, torch.Tensor]:
        """The outer momentum and, compressed, the functions' view, as full tensors keyed
        `momentum.<dtype>` and `view.<dtype>` (a checkpoint's outer state)."""
        with self._lock:
            refs = [self.servers[s.index].outer.remote(self.task_id, s.index) for s in self.specs]
            states = self._wait(refs, "gathering the outer state from the shards")
            self.gathers += 1
            noise = self.noise
        return {**self.assemble(states)[1], **noise_state(noise)}

    def assemble(self, states: Sequence[dict[str, Any]]) -> tuple[Groups, dict[str, torch.Tensor]]:
        """The full model groups (from each shard's `master`, where present) and the outer
        state (`momentum.<dtype>`, `view.<dtype>`) from the shards' parts."""
        model: Groups = {}
        out: dict[str, torch.Tensor] = {}
        for kind in ("master", "momentum", "view"):
            for dtype, numel in self.layout.group_numel:
                if not any(dtype in st.get(kind, {}) for st in states):
                    continue
                like = getattr(torch, dtype) if kind == "master" else torch.float32
                full = torch.zeros(numel, dtype=like)
                for spec, st in zip(self.specs, states, strict=True):
                    for d, a, b in spec.ranges:
                        if d == dtype and dtype in st[kind]:
                            full[a:b].copy_(torch.as_tensor(st[kind][dtype]))
                if kind == "master":
                    model[dtype] = full
                else:
                    out[f"{kind}.{dtype}"] = full
        return model, out

    def drop(self) -> None:
        for server in set(self.servers):
            with contextlib.suppress(RayError):
                server.drop.remote(self.task_id)

    # -- a round -------------------------------------------------------------------------
    def merge(self, reports: Sequence[RoundReport], settle: bool = False) -> None:
        """Merge the round whose functions reported `reports` (those that trained); with
        `settle`, every shard's model becomes the functions' view (`ShardCore.finish`)."""
        with self._lock:
            deposits = [r.handle for r in reports]
            if not all(isinstance(h, ShardDeposit) and h.ok for h in deposits):
                self._lose_round("a function could not reach a parameter shard")
            contributions = [(h.token, r.samples) for h, r in zip(deposits, reports, strict=True)]
            outer = self.specs[0].outer
            terms = None
            if not outer.adaptive:
                terms = StepTerms(outer.momentum if not outer.plain else 0.0, outer.lr)
            task, noise = self.task_id, self.noise
            try:
                sums = ray.get(
                    [
                        self.servers[s.index].merge.remote(
                            task, s.index, contributions, terms, settle
                        )
                        for s in self.specs
                    ],
                    timeout=CALL_TIMEOUT_S,
                )
                if terms is None:
                    share = weights_sq([r.samples for r in reports])
                    terms, noise = adaptive_step(
                        outer.lr, outer.momentum, total(sums), share, self.noise
                    )
                    ray.get(
                        [
                            self.servers[s.index].finish.remote(task, s.index, terms, settle)
                            for s in self.specs
                        ],
                        timeout=CALL_TIMEOUT_S,
                    )
            except (RayError, KeyError, TimeoutError) as exc:
                self._lose_round(f"a parameter shard failed ({type(exc).__name__})")
            self.merged, self.noise = self.merged + 1, noise

    def _lose_round(self, why: str) -> None:
        """Repair what was lost, undo the open round where it was taken, and say so."""
        repaired = self._repair()
        round_index = self.merged + 1
        calls = []
        for spec in self.specs:
            for server in (self.servers[spec.index], self.servers[self._buddy(spec.index)]):
                calls.append(server.rollback.remote(self.task_id, spec.index, round_index))
        self._wait(calls, "rolling the lost round back")
        what = f"; {repaired} shard server(s) replaced" if repaired else ""
        raise RoundLostError(f"{why}{what}: the round is trained again")

    def repair(self) -> int:
        with self._lock:
            return self._repair()

    def _repair(self) -> int:
        """Replace every server that does not answer, restoring the shards it held from
        the others; returns how many were replaced."""
        dead = [i for i, server in enumerate(self.servers) if not _alive(server)]
        if not dead:
            return 0
        for i in dead:
            lost = self.servers[i]
            with contextlib.suppress(Exception):  # alive but not answering: never two primaries
                ray.kill(lost, no_restart=True)
            self.servers[i] = self.pool.replace(lost)
        calls = []
        for spec in self.specs:
            p, b = spec.index, self._buddy(spec.index)
            primary, buddy = self.servers[p], self.servers[b]
            if p in dead and b in dead:
                raise StorageError(
                    f"task {self.task_id}: parameter shard {p} and its replica were both "
                    "lost; resume the task from its last checkpoint"
                )
            if p in dead:
                state = buddy.state.remote(self.task_id, p, True)
                calls.append(primary.hold.remote(self.task_id, spec, state, buddy))
            if b in dead:
                state = primary.state.remote(self.task_id, p)
                calls.append(buddy.hold_replica.remote(self.task_id, spec, state))
                calls.append(primary.set_buddy.remote(self.task_id, p, buddy))
        self._wait(calls, "restoring lost parameter shards from their replicas")
        return len(dead)

    def _wait(self, refs: list[Any], what: str) -> list[Any]:
        return gather(refs, f"task {self.task_id}: {what}", StorageError)


def gather(refs: list[Any], what: str, error: type[KubeMLError]) -> list[Any]:
    """`ray.get(refs)`, or `error` saying `what` failed."""
    try:
        return list(ray.get(refs))
    except RayError as exc:
        raise error(f"{what} failed: {exc!r}") from exc


def _alive(server: Any) -> bool:
    try:
        return bool(ray.get(server.ping.remote(), timeout=PING_S))
    except (RayError, TimeoutError):
        return False


def _slice_present(spec: ShardSpec, groups: Groups) -> dict[str, torch.Tensor]:
    """Copies of the shard's pieces (a pickled view would carry its whole storage)."""
    return {dtype: piece.clone() for dtype, piece in slice_groups(spec, groups).items()}
