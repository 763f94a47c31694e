"""Ray backend: function invocations run in warm Ray actors anywhere on a Ray cluster.

Each invocation runs in a `FunctionActor` (the serverless warm container: torch and the
user's module stay imported between invocations) reserving the CPUs, GPUs and custom
resources the backend was configured with. The actor's `run` method is a streaming
generator that yields the invocation's relay messages (`kubeml.backends.relay`), and a
thread of the control plane per invocation runs the relay's `drive` loop over them
(`actor_relay`): log lines to the task log, round reports to the job's `RoundBarrier`,
requests for object refs of dataset splits and of the reference model, each answered
through the actor's `deliver` method, then the result or the error. A train invocation
of a model small enough to travel by value publishes its rounds over a direct socket to
the control plane instead (`kubeml.backends.ray.rounds`: two Ray messages a round cost
several ms); functions of a task that share a node use that node's relay
(`kubeml.backends.ray.node_relay`), so the control plane reads one message a round per
node. Weights and data move through the Ray object store (see
`kubeml.backends.ray.stores`); nothing assumes a shared filesystem: the function's source
travels with the invocation.

A lost actor (SIGKILLed, out of memory, its node gone) fails its invocation's future with
a `BackendError` within milliseconds, and is forgotten; the job replays the function's
round on a fresh actor, which Ray places wherever the live nodes have room. When they have
none, the backend says so at once (unless `wait_for_nodes`), so the job re-splits the
function's samples over the survivors instead of waiting for a placement.

On a cluster with several nodes that run functions, the model and its merge live on
shard servers spread over them (`shard_plane`, `shard_server`, `shard_client`): the
control plane sends each round's list of deposits to merge and receives no weights. On
one node the merge stays in the control plane (the central merge), which measured faster
there (docs/cluster.md, "Where the merge runs"); `--shards` picks either.
"""

from __future__ import annotations

import atexit
import functools
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.exceptions import RayError

from kubeml.backends.base import FunctionBackend, SyncHandler, note_unbounded
from kubeml.backends.ray import cluster
from kubeml.backends.ray.actor_pool import ActorPool, RayActor, by_lane
from kubeml.backends.ray.actor_relay import (
    ActorTransport,
    FunctionSources,
    RayHooks,
    RoundRelay,
    lost,
)
from kubeml.backends.ray.placement import Resources, Shape, cluster_slots, slot_cpus
from kubeml.backends.ray.relay_pool import NodeRelays
from kubeml.backends.ray.rounds import RoundChannels, RoundOffer
from kubeml.backends.ray.server_pool import ServerPool
from kubeml.backends.ray.stores import INLINE_BYTES, RayDatasetStore, RayModelStore
from kubeml.backends.relay import Failed, drive, resolve, start_gang
from kubeml.errors import BackendError, KubeMLError
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink, Mode
from kubeml.stores.datasets import LocalDatasetStore

if TYPE_CHECKING:
    from kubeml.settings import Settings


# An actor's `memory` resource only schedules; bounding the actor's process would take a
# cgroup made, and removed, on its node from there (docs/cluster.md).
_NOT_BOUNDED = (
    "not enforced: Ray functions are not bounded (an actor's memory resource only "
    "schedules; Ray's memory monitor kills workers only when a node runs low)"
)


class RayBackend(FunctionBackend):
    """Runs each invocation in a warm Ray actor; weights and data go through the object store.

    Args:
        datasets: the control plane's datasets, handed to functions by object ref.
        models: the control plane's weights, handed to functions by object ref.
        capacity: function slots the scheduler may fill (gang admission).
        idle_timeout_s: an idle actor is killed after this long (scale to zero).
        cpus_per_function: CPUs each actor reserves, and torch's thread count; None gives
            each function its slot's share of the cluster (`slot_cpus`: the most CPUs for
            which the live nodes hold `capacity` functions), so the functions of every
            task the scheduler admits fit at once, and one actor size fits every N.
        gpus_per_function: GPUs each actor reserves (set it for `gpu=True` functions).
        resources_per_function: custom Ray resources each actor reserves, to pin
            functions to labelled nodes (`ray start --resources='{"kubeml": 4}'`).
        start_timeout_s: how long a gang may wait for its actors to be placed.
        wait_for_nodes: actors the live nodes have no room for wait up to
            `start_timeout_s` for new nodes (an autoscaling cluster); otherwise they fail
            at once, so a lost function's replacement gives way to the survivors.
        relay_min_functions: a task's functions on one node from which their rounds go
            through the node's relay (0: never).
        owns_ray: shut Ray down on `close` (this backend started it).
    """

    name = "ray"
    memory_limit = _NOT_BOUNDED
    takes_threads = False  # torch runs the CPUs its actor reserved
    datasets: RayDatasetStore
    models: RayModelStore

    def __init__(
        self,
        datasets: RayDatasetStore,
        models: RayModelStore,
        capacity: int,
        *,
        idle_timeout_s: float = 300.0,
        cpus_per_function: float | None = None,
        gpus_per_function: float = 0.0,
        resources_per_function: Resources | None = None,
        start_timeout_s: float = 180.0,
        wait_for_nodes: bool = False,
        relay_min_functions: int = 4,
        owns_ray: bool = False,
    ) -> None:
        super().__init__(capacity)
        self.datasets, self.models = datasets, models
        self.idle_timeout_s = idle_timeout_s
        self.cpus_per_function = cpus_per_function
        self.gpus_per_function = gpus_per_function
        self.resources_per_function = dict(resources_per_function or {})
        self._owns_ray = owns_ray
        self._actors = ActorPool(
            resources_per_function=self.resources_per_function,
            start_timeout_s=start_timeout_s,
            wait_for_nodes=wait_for_nodes,
            idle_timeout_s=idle_timeout_s,
        )
        self._rounds = RoundChannels(cluster.node_address())
        self._relays = NodeRelays(self._rounds, relay_min_functions)
        self._hooks = RayHooks(datasets, models)
        self._sources = FunctionSources()
        self._live_nodes: tuple[list[Resources], float] = ([], 0.0)  # (nodes, when)
        atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RayBackend:
        """Connect to `settings.ray_address` (or start a local Ray) and build the backend.

        A Ray already initialised in this process (a test's cluster) is used as it is.
        Capacity is `KUBEML_CAPACITY` when set (then functions wait for nodes, as on an
        autoscaling cluster), else the functions the cluster's CPUs (and GPUs, if
        functions need them) can hold at once.
        """
        owns = cluster.start(settings)
        home = Path(settings.home).expanduser()
        options.setdefault("cpus_per_function", settings.ray_cpus_per_function)
        options.setdefault("gpus_per_function", settings.ray_gpus_per_function)
        options.setdefault("relay_min_functions", settings.ray_relay_min_functions)
        if "capacity" in settings.model_fields_set:
            capacity = settings.capacity
            options.setdefault("wait_for_nodes", True)
        else:
            capacity = cluster_slots(
                cluster.total(), options["cpus_per_function"], options["gpus_per_function"]
            )
        pool = ServerPool(settings.ray_chunk_cache_mb * 2**20)  # node servers, for both
        return cls(
            RayDatasetStore(LocalDatasetStore(home / "datasets"), pool),
            RayModelStore(home / "models", pool),
            capacity,
            idle_timeout_s=settings.worker_idle_timeout_s,
            owns_ray=owns,
            **options,
        )

    # -- actors -------------------------------------------------------------------------------
    def _shape(self, inv: Invocation) -> Shape:
        """What each function of `inv`'s gang reserves. Not the job's thread count (the
        control plane's cores / N): a slot must reserve no more than its share, or a
        task the scheduler admitted would find its CPUs held by another's actors."""
        if self.cpus_per_function is not None:
            return self.cpus_per_function, self.gpus_per_function
        cpus = slot_cpus(
            self._nodes(), self.capacity, self.gpus_per_function, self.resources_per_function
        )
        return cpus, self.gpus_per_function

    def _nodes(self) -> list[Resources]:
        """The live nodes' resources, read at most every 10 s."""
        nodes, measured = self._live_nodes
        if time.monotonic() - measured > 10:
            nodes = list(cluster.live_nodes().values())
            self._live_nodes = (nodes, time.monotonic())
        return nodes

    def warm(self, count: int) -> None:
        """Start `count` actors ahead of demand (the engine calls it at server start).

        Only with a fixed `cpus_per_function`: otherwise an actor's size follows the
        cluster's live nodes, which may still be joining when the server starts.
        """
        if self.cpus_per_function is None:
            return
        shape = (self.cpus_per_function, self.gpus_per_function)
        try:
            actors = self._actors.acquire(shape, count, "warm-up", light=False)
        except BackendError:
            return  # the cluster is smaller than the capacity: the first task will say so
        for actor in actors:
            self._actors.release(actor, healthy=True)

    # -- invocations --------------------------------------------------------------------------
    def invoke(
        self, invocations: Sequence[Invocation], *, sync: SyncHandler | None, log: LogSink
    ) -> list[Future[InvocationResult]]:
        if not invocations:
            return []
        note_unbounded(self, invocations[0], log)
        code = self._sources.carried(invocations[0].function)
        light = len(invocations) == 1 and invocations[0].mode in (Mode.INIT, Mode.INFER)
        shape = self._shape(invocations[0])
        actors = self._actors.acquire(shape, len(invocations), invocations[0].task_id, light)
        actors = by_lane(actors, invocations)
        crowds = Counter(a.node_id for a in actors)  # the gang's functions on each node

        def run(index: int, inv: Invocation, future: Future[InvocationResult]) -> None:
            actor = actors[index]
            # torch uses exactly the CPUs the actor reserved
            inv = replace(inv, function=code, threads=max(1, int(actor.shape[0])))
            self._drive(actor, inv, sync, log, future, crowds[actor.node_id])

        return start_gang(invocations, run, "ray")

    def _drive(
        self,
        actor: RayActor,
        inv: Invocation,
        sync: SyncHandler | None,
        log: LogSink,
        future: Future[InvocationResult],
        crowd: int = 1,
    ) -> None:
        """Relay one invocation between its actor and the job (its rounds over a direct
        socket, when it may have one; `crowd`: its gang's functions on the actor's node)."""
        offer, rounds = self._offer_rounds(inv, sync, actor.node_id, crowd)
        try:
            outcome = drive(ActorTransport(actor.handle, offer), inv, sync, log, self._hooks)
            if rounds is not None and rounds.failed is not None:
                raise rounds.failed
        except Exception as exc:  # the actor, its node or the relay failed: never hang the job
            self._actors.release(actor, healthy=False)
            resolve(future, sync, inv.func_id, _failure(actor, inv, exc))
            return
        finally:
            if offer is not None:
                self._rounds.withdraw(offer)
        healthy = not (isinstance(outcome, Failed) and outcome.replace_worker)
        self._actors.release(actor, healthy=healthy)  # an unhealthy one is killed; a new one starts
        resolve(future, sync, inv.func_id, outcome)

    def _offer_rounds(
        self, inv: Invocation, sync: SyncHandler | None, node_id: str, crowd: int
    ) -> tuple[RoundOffer | None, RoundRelay | None]:
        """A direct socket for a train invocation's rounds, when its weights travel by
        value or not at all (messages with object refs must stay in Ray's serialisation);
        through its node's relay when that carries no weights either (a sharded task)."""
        if inv.mode is not Mode.TRAIN or sync is None:
            return None, None
        try:
            small = self.models.layout(inv.task_id).nbytes <= INLINE_BYTES
        except KubeMLError:
            return None, None
        # A sharded task's reports carry a token, not weights, and its releases no weights.
        sharded = self.models.sharded.plane(inv.task_id) is not None
        if not small and not sharded:
            return None, None
        via = self._relays.address(node_id, crowd) if sharded else None
        relay = RoundRelay(inv, sync, self._hooks)
        offer = self._rounds.offer(relay.answer, inv.task_id, via)
        relay.end = functools.partial(self._rounds.withdraw, offer)
        return offer, relay

    def cancel(self, task_id: str) -> None:
        self._actors.cancel(task_id)

    def close(self) -> None:
        actors = self._actors.close()
        if actors is None:
            return
        self._relays.close()
        self._rounds.close()
        if cluster.running():
            for actor in actors:
                actor.close()
            self.datasets.close()
            self.models.close()
            if self._owns_ray:
                cluster.stop()

    def cores(self) -> int:
        """The cluster's CPUs, not the control plane's: its machine may be a small one
        that runs no function."""
        return max(1, int(cluster.total().get("CPU", 0.0)))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "round_sockets": self._rounds.admitted,  # train invocations that used one
            "relayed_round_sockets": self._rounds.relayed,  # of them, through a node relay
            "node_relays": self._relays.describe(),  # node id -> pid
            "shard_servers": self.models.sharded.servers(),  # (node id, pid) of each
            **self._actors.describe(),  # worker_pids: by task, on the actors' nodes
        }


def _failure(actor: RayActor, inv: Invocation, exc: Exception) -> BackendError:
    """What relaying `inv` on `actor` raising `exc` means for the job."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, RayError):
        return lost(actor.node_id, inv, exc)
    error = BackendError(f"relaying function {inv.func_id} failed: {exc!r}")
    error.__cause__ = exc
    return error
