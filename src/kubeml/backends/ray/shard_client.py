"""A function's side of a sharded task: the model as it holds it (the shards' `view`),
its change deposited at every shard, and each round's update applied.

Per round a function sends each shard its piece of `weights - view` in the task's sync
precision, and after the release receives each shard's update: the new values at
`fp32`, else the view's change in that precision, which it adds to its own view as the
shard added it to its own (the same bits). A function that missed an update (a fresh
invocation, a shard replaced) reads the whole view again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from kubeml.backends.ray.shard_plane import (
    CALL_TIMEOUT_S,
    ShardDeposit,
    ShardRoute,
    gather,
    new_token,
)
from kubeml.errors import BackendError
from kubeml.stores.codecs import Encoded, decode, encode
from kubeml.stores.interfaces import Groups
from kubeml.stores.shard_core import piece_digest

Route = Callable[[bool], ShardRoute]  # (repair) -> the task's route, from the control plane


class ShardedWeights:
    """One task's weights on one function actor."""

    def __init__(self, task_id: str, route: ShardRoute, ask_route: Route) -> None:
        self.task_id, self.route, self._ask_route = task_id, route, ask_route
        layout = route.layout
        self.view: Groups = {
            d: torch.zeros(n, dtype=getattr(torch, d)) for d, n in layout.group_numel
        }
        self._weights: Groups = {d: torch.empty_like(t) for d, t in self.view.items()}
        self._fresh = False  # the view holds the shards' view
        self._token: bytes | None = None  # deposited in the round just released
        self._applied: bytes | None = None  # the token whose round's update the view holds
        # Overlapped rounds: where the round started, and its change (`EagerWeights`).
        self._start: Groups | None = None
        self._change: Groups | None = None

    def forget(self) -> None:
        """A new invocation. The view is kept: its first load applies the last merged
        round's update if this actor's deposit was part of that round (the next epoch of
        the same lanes: a compressed update instead of the whole model), or only asks the
        shards that no round was merged since, if the update is applied already (the
        epoch's scoring loaded it); and reads the whole view otherwise (the shards moved
        on without it, or back: a lost round)."""

    # -- in ------------------------------------------------------------------------------
    def load_into(self, state: dict[str, torch.Tensor]) -> None:
        """The functions' view of the model into `state` (at each round's start, and for
        the epoch's validation, where the shards settled the model to it)."""
        if not self._current():
            self._reload()
        self.route.layout.unflatten_into(self.view, state)

    def _current(self) -> bool:
        """Bring the view to the shards' last merged round with that round's update, if
        this actor deposited in it; True if the view is now the shards' view. An update
        applied already (the epoch's validation loaded it) is not applied again: the
        shards only confirm that no round was merged since."""
        token, self._token = self._token, None
        if not self._fresh or token is None:
            return False
        current = self._holds(token) if token == self._applied else self._apply_updates(token)
        if current:
            self._token = self._applied = token
        return current

    def _holds(self, token: bytes) -> bool:
        held = self._ask_each("holds", token)
        return held is not None and all(held)

    def _ask_each(self, method: str, *args: Any) -> list[Any] | None:
        """`method(task, shard, *args)` of every shard's server; None if one failed."""
        pairs = self._pairs()
        calls = [getattr(srv, method).remote(self.task_id, s.index, *args) for s, srv in pairs]
        try:
            return list(ray.get(calls, timeout=CALL_TIMEOUT_S))
        except (RayError, TimeoutError):
            return None

    def adopt(self, state: dict[str, torch.Tensor]) -> bool:
        """Take `state`, the initial model built on this actor, as the view if every shard
        holds the same bits and has merged no round yet: no model crosses the network.
        First hand each shard server on this node its piece, which it takes if it awaits
        the same bits (`ShardServer.offer`)."""
        try:
            self.route.layout.flatten_into(state, self._weights)
        except (KeyError, RuntimeError, ValueError):
            return False  # not the task's layout
        self._offer()
        answers = self._ask_each("digest")  # None: a shard gone (the first load repairs it)
        if answers is None:
            return False
        for (spec, _), (merged, digest) in zip(self._pairs(), answers, strict=True):
            pieces = {d: self._weights[d][a:b] for d, a, b in spec.ranges}
            if merged or piece_digest(spec, pieces) != digest:
                return False
        with torch.no_grad():
            for dtype, built in self._weights.items():
                self.view[dtype].copy_(built)
        self._fresh, self._token, self._applied = True, None, None
        return True

    def _offer(self) -> None:
        """This node's shard servers' pieces of the model just built (`adopt`)."""
        route, here = self.route, ray.get_runtime_context().get_node_id()
        calls = []
        for i, spec in enumerate(route.specs):
            holders = [
                (servers[i], replica)
                for servers, nodes, replica in (
                    (route.servers, route.nodes, False),
                    (route.replicas, route.replica_nodes, True),
                )
                if i < len(nodes) and nodes[i] == here
            ]
            if holders:
                pieces = {d: self._weights[d][a:b].numpy().copy() for d, a, b in spec.ranges}
            for server, replica in holders:
                calls.append(server.offer.remote(self.task_id, spec.index, pieces, replica))
        # A shard that did not take its piece fetches it when first needed.
        with contextlib.suppress(RayError, TimeoutError):
            ray.get(calls, timeout=CALL_TIMEOUT_S)

    def model_into(self, state: dict[str, torch.Tensor]) -> None:
        """The model itself (validation): the shards' masters."""
        refs = [srv.model.remote(self.task_id, s.index) for s, srv in self._pairs()]
        parts = gather(
            refs, f"task {self.task_id}: reading the model from its shards", BackendError
        )
        groups = {d: torch.empty_like(t) for d, t in self.view.items()}
        for (spec, _), part in zip(self._pairs(), parts, strict=True):
            for dtype, a, b in spec.ranges:
                groups[dtype][a:b].copy_(torch.from_numpy(np.array(part[dtype])))
        self.route.layout.unflatten_into(groups, state)

    def _pairs(self) -> list[tuple[Any, Any]]:
        return list(zip(self.route.specs, self.route.servers, strict=True))

    def _apply_updates(self, token: bytes) -> bool:
        updates = self._ask_each("update", token)
        if updates is None or any(u is None for u in updates):
            return False
        with torch.no_grad():
            for (spec, _), update in zip(self._pairs(), updates, strict=True):
                for dtype, a, b in spec.ranges:
                    part, target = update[dtype], self.view[dtype][a:b]
                    if not isinstance(part, Encoded):
                        target.copy_(torch.from_numpy(np.array(part)))
                    elif part.precision == "fp32":
                        decode(part, target)
                    else:
                        target.add_(decode(part))
        return True

    def _reload(self) -> None:
        """The whole view again, from every shard (repairing lost ones once)."""
        for attempt in range(2):
            try:
                parts = ray.get(
                    [srv.functions_view.remote(self.task_id, s.index) for s, srv in self._pairs()],
                    timeout=CALL_TIMEOUT_S,
                )
                if len({merged for merged, _ in parts}) > 1:
                    raise BackendError("the shards are at different rounds")
                break
            except (RayError, BackendError, TimeoutError):
                if attempt:
                    raise
                self.route = self._ask_route(True)
        with torch.no_grad():
            for (spec, _), (_, part) in zip(self._pairs(), parts, strict=True):
                for dtype, a, b in spec.ranges:
                    self.view[dtype][a:b].copy_(torch.from_numpy(np.array(part[dtype])))
        self._fresh, self._applied = True, None

    # -- out -----------------------------------------------------------------------------
    def publish(self, state: dict[str, torch.Tensor]) -> ShardDeposit:
        """Deposit this round's change at every shard; the handle for the round report."""
        self.route.layout.flatten_into(state, self._weights)
        mine, view = self._weights, self.view
        return self._deposit(lambda dtype, a, b: mine[dtype][a:b].float() - view[dtype][a:b])

    def _deposit(self, change: Callable[[str, int, int], torch.Tensor]) -> ShardDeposit:
        """Send every shard its piece of `change(dtype, a, b)` (the float groups; the others
        as the weights hold them)."""
        precision = self.route.precision
        token = new_token()
        calls = []
        with torch.no_grad():
            for spec, server in self._pairs():
                payload: dict[str, Any] = {}
                for dtype, a, b in spec.ranges:
                    mine = self._weights[dtype][a:b]
                    if mine.is_floating_point():
                        payload[dtype] = encode(change(dtype, a, b), precision)
                    else:
                        payload[dtype] = mine.numpy().copy()
                calls.append(server.deposit.remote(self.task_id, spec.index, token, payload))
        try:
            ray.get(calls, timeout=CALL_TIMEOUT_S)
        except (RayError, TimeoutError):
            self._fresh = False
            return ShardDeposit(token, ok=False)
        self._token = token
        return ShardDeposit(token)

    # -- overlapped rounds (`EagerWeights`) ----------------------------------------------
    def begin(self) -> None:
        if self._start is None:
            self._start = {d: torch.empty_like(t) for d, t in self.view.items()}
            self._change = {d: torch.empty_like(t) for d, t in self.view.items()}
        for dtype, held in self.view.items():
            self._start[dtype].copy_(held)

    def rebase(self, state: dict[str, torch.Tensor]) -> None:
        assert self._start is not None and self._change is not None, "rebase before begin"
        if not self._fresh:  # the last catch-up failed: the whole model again (repairing)
            self._reload()
        self.route.layout.flatten_into(state, self._weights)
        with torch.no_grad():
            for dtype, mine in self._weights.items():
                start, change = self._start[dtype], self._change[dtype]
                if mine.is_floating_point():
                    torch.sub(mine, start, out=change)
                    torch.add(self.view[dtype], change, out=start)
                else:
                    start.copy_(mine)
        self.route.layout.unflatten_into(self._start, state)

    def deposit(self) -> ShardDeposit:
        change = self._change
        assert change is not None, "deposit before rebase"
        return self._deposit(lambda dtype, a, b: change[dtype][a:b])

    def catch_up(self) -> bool:
        current = self._current()
        self._fresh = current
        return current
