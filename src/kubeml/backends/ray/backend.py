"""Ray backend: function invocations run in warm Ray actors anywhere on a Ray cluster.

Each invocation runs in a `_FunctionActor` (the serverless warm container: torch and the
user's module stay imported between invocations) reserving the CPUs, GPUs and custom
resources the backend was configured with. The actor's `run` method is a streaming
generator that yields the invocation's relay messages (`kubeml.backends.relay`), and a
driver-side thread per invocation runs the relay's `drive` loop over them: log lines to
the task log, round reports to the job's `RoundBarrier`, requests for object refs of
dataset splits and of the reference model, each answered through the actor's `deliver`
method, then the result or the error. A train invocation of a model small enough to travel
by value publishes its rounds over a direct socket to the control plane instead
(`kubeml.backends.ray.rounds`: two Ray messages a round cost several ms). Weights and data
move through the Ray object store (see `kubeml.backends.ray.stores`); nothing assumes a
shared filesystem: the function's source travels with the invocation.

A lost actor (SIGKILLed, out of memory, its node gone) fails its invocation's future with
a `BackendError` within milliseconds, and is forgotten; the job replays the function's
round on a fresh actor, which Ray places wherever the live nodes have room. When they have
none, the backend says so at once (unless `wait_for_nodes`), so the job re-splits the
function's samples over the survivors instead of waiting for a placement.

The merge stays in the control plane, chosen by measured round time (docs/cluster.md has
the numbers). A prototype merging in a Ray actor beside one of the functions moves fewer
bytes (2(N-1) weight transfers a round instead of 2N) and cut a bare round's sync (K=1, no
compute, 2-node local cluster) from about 22 to 17 ms; but on the reference workload
(LeNet-5, N=2, K=8) it trained at 9,650 samples/s against 12,090 here. The merge actor
competes for its node's CPU with the function beside it, and it loses the control plane's
prefetch, which fetches each function's weights while the round still waits for the
slower one. Merging here also keeps the reference where the job saves it every epoch,
with no second copy to lose with a node, and the job needs no Ray-specific code.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.backends.base import FunctionBackend, SyncHandler
from kubeml.backends.relay import (
    Done,
    Endpoint,
    Failed,
    FromFunction,
    Invoke,
    PipeTransport,
    RelayHooks,
    ToFunction,
    drive,
    relay_rounds,
    resolve,
    run_invocation,
    start_gang,
)
from kubeml.errors import BackendError, FunctionError, KubeMLError, MissingDependencyError
from kubeml.runtime.invocation import FunctionCode, Invocation, InvocationResult, LogSink, Mode
from kubeml.runtime.sync import Release, RoundReport

try:
    import ray
    from ray.exceptions import RayError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the ray backend needs Ray, an optional extra: pip install 'kubeml[ray]'"
    ) from exc

from kubeml.backends.ray.rounds import RoundChannels, RoundOffer
from kubeml.backends.ray.rounds import connect as connect_rounds
from kubeml.backends.ray.stores import (
    INLINE_BYTES,
    RayDatasetStore,
    RayModelStore,
    RemoteDatasetStore,
    RemoteModelStore,
    answer,
)
from kubeml.stores.datasets import LocalDatasetStore

if TYPE_CHECKING:
    from kubeml.settings import Settings

Shape = tuple[float, float]  # (CPUs, GPUs) an actor reserves

# What kubeml sets on a Ray it starts itself (a cluster someone else started keeps its own;
# docs/cluster.md says how to set the same there):
# - `worker_niceness` 0: Ray starts its workers at nice 15, so that its raylet wins the
#   CPU. A function actor is the work here, and at nice 15 it lost its core to every nice-0
#   thread: the control plane's merge each round, or any other program on the machine
#   (the process backend's workers run at nice 0).
# - `max_direct_call_object_size`: a round's weights up to `INLINE_BYTES` travel inside
#   the RPC that carries the relay's message instead of through the object store (Ray's
#   default cut-off is 100 KiB; a 244 KB LeNet-5 message took 1.9 ms that way, 1.1 ms inline).
LOCAL_RAY_CONFIG: dict[str, Any] = {
    "worker_niceness": 0,
    "max_direct_call_object_size": INLINE_BYTES + 2**16,  # the weights and their message
}


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


class _FunctionActor:
    """A warm function container on some Ray node (used as `ray.remote(_FunctionActor)`)."""

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


class _ActorTransport:
    """The control plane's end of one actor's relay."""

    def __init__(self, actor: Any, offer: RoundOffer | None = None) -> None:
        self.actor, self.offer = actor, offer
        self.stream: Any = None

    def send(self, message: ToFunction) -> None:
        if isinstance(message, Invoke):
            self.stream = iter(self.actor.run.remote(message.invocation, self.offer))
        else:
            self.actor.deliver.remote(message)

    def receive(self) -> FromFunction:
        try:
            ref = next(self.stream)
        except StopIteration:
            raise BackendError("the Ray actor ended the invocation without a result") from None
        message: FromFunction = ray.get(ref)
        return message


class _RoundRelay:
    """The control plane's side of one invocation's round socket, on its own thread:
    answers each `Publish` with its `Released` until the function closes the socket."""

    def __init__(
        self,
        arrival: Future[Any],
        end: Callable[[], None],
        inv: Invocation,
        sync: SyncHandler,
        log: LogSink,
        hooks: RelayHooks,
    ) -> None:
        self.arrival, self.end = arrival, end  # end: shut the socket down
        self.inv, self.sync, self.log, self.hooks = inv, sync, log, hooks
        self.failed: Exception | None = None  # what broke the relay, for the invocation

    def run(self) -> None:
        try:
            conn = self.arrival.result()
        except CancelledError:
            return  # the invocation ended (or published through Ray) before it connected
        try:
            relay_rounds(PipeTransport(conn), self.inv, self.sync, self.log, self.hooks)
        except (EOFError, OSError):
            pass  # closed: the invocation is over, or its actor died (Ray says which)
        except Exception as exc:
            self.failed = exc
            self.end()  # the function's publish fails, and its invocation with it
        finally:
            conn.close()


class _RayHooks(RelayHooks):
    """Object refs for the functions' stores: the reference travels with each release."""

    def __init__(self, datasets: RayDatasetStore, models: RayModelStore) -> None:
        self.datasets, self.models = datasets, models

    def before_merge(self, inv: Invocation, report: RoundReport) -> None:
        self.models.prefetch(inv.task_id, report.func_id, report.handle)

    def with_release(self, inv: Invocation, release: Release) -> Any:
        return self.models.reference_for_function(inv.task_id) if release.proceed else None

    def answer(self, inv: Invocation, what: Any) -> Any:
        return answer(self.datasets, self.models, what)


@dataclass(eq=False)
class _Actor:
    handle: Any
    shape: Shape
    node_id: str = "?"  # known once placed
    pid: int | None = None
    task_id: str | None = None
    last_task_id: str | None = None
    idle_since: float = field(default_factory=time.monotonic)


class RayBackend(FunctionBackend):
    """Runs each invocation in a warm Ray actor; weights and data go through the object store.

    Args:
        datasets: the control plane's datasets, served to functions by object ref.
        models: the control plane's weights, served to functions by object ref.
        capacity: function slots the scheduler may fill (gang admission).
        idle_timeout_s: an idle actor is killed after this long (scale to zero).
        cpus_per_function: CPUs each actor reserves, and torch's thread count; None gives
            each function its slot's share of the cluster (`slot_cpus`: the most CPUs for
            which the live nodes hold `capacity` functions), so the functions of every
            task the scheduler admits fit at once, and one actor size serves every N.
        gpus_per_function: GPUs each actor reserves (set it for `gpu=True` functions).
        resources_per_function: custom Ray resources each actor reserves, to pin
            functions to labelled nodes (`ray start --resources='{"kubeml": 4}'`).
        start_timeout_s: how long a gang may wait for its actors to be placed.
        wait_for_nodes: actors the live nodes have no room for wait up to
            `start_timeout_s` for new nodes (an autoscaling cluster); otherwise they fail
            at once, so a lost function's replacement gives way to the survivors.
        owns_ray: shut Ray down on `close` (this backend started it).
    """

    name = "ray"
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
        resources_per_function: dict[str, float] | None = None,
        start_timeout_s: float = 180.0,
        wait_for_nodes: bool = False,
        owns_ray: bool = False,
    ) -> None:
        super().__init__(capacity)
        self.datasets, self.models = datasets, models
        self.idle_timeout_s = idle_timeout_s
        self.cpus_per_function = cpus_per_function
        self.gpus_per_function = gpus_per_function
        self.resources_per_function = dict(resources_per_function or {})
        self.start_timeout_s = start_timeout_s
        self.wait_for_nodes = wait_for_nodes
        self._owns_ray = owns_ray
        self._remote = ray.remote(_FunctionActor)
        self._rounds = RoundChannels(ray.util.get_node_ip_address())
        self._hooks = _RayHooks(datasets, models)
        self._idle: list[_Actor] = []
        self._busy: list[_Actor] = []
        self._sources: dict[str, str] = {}
        self._live_nodes: tuple[list[dict[str, float]], float] = ([], 0.0)  # (nodes, when)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._reap_idle, name="kubeml-ray-reaper", daemon=True).start()
        atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RayBackend:
        """Connect to `settings.ray_address` (or start a local Ray) and build the backend.

        A Ray already initialised in this process (a test's cluster) is used as it is.
        Capacity is `KUBEML_CAPACITY` when set (then functions wait for nodes, as on an
        autoscaling cluster), else the functions the cluster's CPUs (and GPUs, if
        functions need them) can hold at once.
        """
        owns = not ray.is_initialized()
        if owns:
            ray.init(
                address=settings.ray_address or "local",
                namespace="kubeml",
                include_dashboard=False,
                num_cpus=None if settings.ray_address else settings.capacity,
                _system_config=None if settings.ray_address else LOCAL_RAY_CONFIG,
            )
        home = Path(settings.home).expanduser()
        options.setdefault("cpus_per_function", settings.ray_cpus_per_function)
        options.setdefault("gpus_per_function", settings.ray_gpus_per_function)
        if "capacity" in settings.model_fields_set:
            capacity = settings.capacity
            options.setdefault("wait_for_nodes", True)
        else:
            capacity = _cluster_slots(options["cpus_per_function"], options["gpus_per_function"])
        return cls(
            RayDatasetStore(LocalDatasetStore(home / "datasets")),
            RayModelStore(home / "models"),
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

    def _nodes(self) -> list[dict[str, float]]:
        """The live nodes' resources, read at most every 10 s."""
        nodes, measured = self._live_nodes
        if time.monotonic() - measured > 10:
            nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
            self._live_nodes = (nodes, time.monotonic())
        return nodes

    def _spawn(self, shape: Shape, task_id: str) -> _Actor:
        handle = self._remote.options(
            num_cpus=shape[0],
            num_gpus=shape[1],
            resources=self.resources_per_function,
            max_concurrency=4,  # run() streams while deliver() brings releases and answers
            max_restarts=0,
        ).remote()
        return _Actor(handle, shape, task_id=task_id)

    def _kill(self, actor: _Actor) -> None:
        with contextlib.suppress(Exception):
            ray.kill(actor.handle, no_restart=True)

    def _acquire(self, shape: Shape, count: int, task_id: str, light: bool) -> list[_Actor]:
        """`count` started actors of `shape`; a `light` invocation (init, infer) takes any
        warm actor rather than start one of its own shape."""
        with self._lock:
            if self._closed.is_set():
                raise BackendError("the ray backend is closed")
            taken = [a for a in self._idle if a.shape == shape][:count]
            if light:  # an actor that ran this task last may keep its model loaded
                warm = [a for a in self._idle if a.last_task_id == task_id]
                taken = (warm or taken or self._idle)[:count]
            missing = count - len(taken)
            if missing and not self._room(shape, missing, self._placed() + taken):
                raise self._no_room(missing, shape, task_id)
            rest = [a for a in self._idle if a not in taken]
            # Idle actors of another shape hold resources the new ones may need.
            doomed = rest if missing else []
            self._idle = [a for a in rest if a not in doomed]
            for actor in taken:
                actor.task_id = task_id
            taken += [self._spawn(shape, task_id) for _ in range(missing)]
            self._busy.extend(taken)
        for actor in doomed:
            self._kill(actor)
        return self._wait_started(taken, shape, task_id)

    def _wait_started(self, actors: list[_Actor], shape: Shape, task_id: str) -> list[_Actor]:
        """Wait until every actor of the gang is placed and alive; replace dead warm ones."""
        deadline = time.monotonic() + self.start_timeout_s
        for _ in range(3):
            unplaced, dead = self._ping(actors, shape, deadline)
            if unplaced:
                for actor in actors:
                    self._release(actor, healthy=actor not in unplaced and actor not in dead)
                if time.monotonic() < deadline:  # given up early: the nodes left are full
                    raise self._no_room(len(unplaced), shape, task_id)
                raise BackendError(
                    f"Ray could not place {len(unplaced)} of {len(actors)} function(s) of task "
                    f"{task_id} within {self.start_timeout_s:.0f} s, each needing "
                    f"{_describe_shape(shape, self.resources_per_function)}; the cluster has "
                    f"{_available()} free. Lower --parallelism or add nodes"
                )
            if not dead:
                return actors
            for actor in dead:
                self._release(actor, healthy=False)
            actors = [a for a in actors if a not in dead]
            with self._lock:
                if not self._room(shape, len(dead), self._placed()):
                    error = self._no_room(len(dead), shape, task_id)
                else:
                    error = None
                    spawned = [self._spawn(shape, task_id) for _ in dead]
                    self._busy.extend(spawned)
            if error is not None:
                for actor in actors:
                    self._release(actor, healthy=True)
                raise error
            actors += spawned
        for actor in actors:
            self._release(actor, healthy=False)
        raise BackendError(f"the Ray actors for task {task_id} kept dying as they started")

    def _ping(
        self, actors: list[_Actor], shape: Shape, deadline: float
    ) -> tuple[list[_Actor], list[_Actor]]:
        """Wait for each actor's first answer (it is placed and has imported torch):
        returns those still unplaced at the deadline, or once the live nodes have no room
        for them, and those that died."""
        pings = {actor.handle.where.remote(): actor for actor in actors}
        waiting, dead = list(pings), []
        while waiting and (timeout := min(1.0, deadline - time.monotonic())) > 0:
            ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=timeout)
            for ref in ready:
                try:
                    pings[ref].node_id, pings[ref].pid = ray.get(ref)
                except RayError:
                    dead.append(pings[ref])  # a warm actor whose node is gone
            # Those with no node yet need room (a warm actor slow to answer has its node).
            unplaced = [pings[ref] for ref in waiting if pings[ref].node_id == "?"]
            if unplaced:
                with self._lock:
                    placed = [a for a in self._placed() if a not in dead]
                if not self._room(shape, len(unplaced), placed):
                    break  # a node was lost while they waited
        return [pings[ref] for ref in waiting], dead

    def _placed(self) -> list[_Actor]:
        """Busy actors with a known node (call with the lock held)."""
        return [a for a in self._busy if a.node_id != "?"]

    def _room(self, shape: Shape, count: int, occupied: list[_Actor]) -> bool:
        """Whether the live nodes could hold `count` more actors of `shape` beside the
        `occupied` ones (this backend's placed actors; other Ray users' are not known).
        Always True with `wait_for_nodes`: new nodes may come."""
        if self.wait_for_nodes:
            return True
        free = {n["NodeID"]: dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")}
        for actor in occupied:
            if actor.node_id in free:
                _take(free[actor.node_id], self._demand(actor.shape))
        need = self._demand(shape)
        for _ in range(count):
            node = next((r for r in free.values() if _fits(r, need)), None)
            if node is None:
                return False
            _take(node, need)
        return True

    def _demand(self, shape: Shape) -> dict[str, float]:
        demand = {"CPU": shape[0], "GPU": shape[1], **self.resources_per_function}
        return {k: v for k, v in demand.items() if v > 0}

    def _no_room(self, count: int, shape: Shape, task_id: str) -> BackendError:
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        return BackendError(
            f"no live Ray node has room for {count} more function(s) of task {task_id}, each "
            f"needing {_describe_shape(shape, self.resources_per_function)} ({alive} live "
            f"node(s), {_available()} free). Lower --parallelism or add nodes"
        )

    def warm(self, count: int) -> None:
        """Start `count` actors ahead of demand (the engine calls it at server start).

        Only with a fixed `cpus_per_function`: otherwise an actor's size follows the
        cluster's live nodes, which may still be joining when the server starts.
        """
        if self.cpus_per_function is None:
            return
        shape = (self.cpus_per_function, self.gpus_per_function)
        try:
            actors = self._acquire(shape, count, "warm-up", light=False)
        except BackendError:
            return  # the cluster is smaller than the capacity: the first task will say so
        for actor in actors:
            self._release(actor, healthy=True)

    def _release(self, actor: _Actor, healthy: bool) -> None:
        with self._lock:
            if actor in self._busy:
                self._busy.remove(actor)
            actor.last_task_id, actor.task_id = actor.task_id, None
            actor.idle_since = time.monotonic()
            if healthy and not self._closed.is_set():
                self._idle.append(actor)
                return
        self._kill(actor)

    def _reap_idle(self) -> None:
        """Scale to zero: kill actors idle for longer than `idle_timeout_s`."""
        period = min(10.0, max(0.5, self.idle_timeout_s / 4))
        while not self._closed.wait(period):
            now = time.monotonic()
            with self._lock:
                expired = [a for a in self._idle if now - a.idle_since > self.idle_timeout_s]
                self._idle = [a for a in self._idle if a not in expired]
            for actor in expired:
                self._kill(actor)

    # -- invocations --------------------------------------------------------------------------
    def _carried(self, code: FunctionCode) -> FunctionCode:
        """The function with its source, so no node needs the control plane's files."""
        source = self._sources.get(code.sha256)
        if source is None:
            try:
                source = Path(code.path).read_text()
            except OSError as exc:
                raise FunctionError(
                    f"function {code.name!r}: cannot read its code {code.path}"
                ) from exc
            self._sources[code.sha256] = source
        return FunctionCode(code.name, code.sha256, code.path, source)

    def invoke(
        self, invocations: Sequence[Invocation], *, sync: SyncHandler | None, log: LogSink
    ) -> list[Future[InvocationResult]]:
        if not invocations:
            return []
        code = self._carried(invocations[0].function)
        light = len(invocations) == 1 and invocations[0].mode in (Mode.INIT, Mode.INFER)
        shape = self._shape(invocations[0])
        actors = self._acquire(shape, len(invocations), invocations[0].task_id, light)

        def run(index: int, inv: Invocation, future: Future[InvocationResult]) -> None:
            actor = actors[index]
            # torch uses exactly the CPUs the actor reserved
            inv = replace(inv, function=code, threads=max(1, int(actor.shape[0])))
            self._drive(actor, inv, sync, log, future)

        return start_gang(invocations, run, "ray")

    def _drive(
        self,
        actor: _Actor,
        inv: Invocation,
        sync: SyncHandler | None,
        log: LogSink,
        future: Future[InvocationResult],
    ) -> None:
        """Relay one invocation between its actor and the job (its rounds over a direct
        socket, when it may have one)."""
        offer, rounds = self._offer_rounds(inv, sync, log)
        try:
            outcome = drive(_ActorTransport(actor.handle, offer), inv, sync, log, self._hooks)
            if rounds is not None and rounds.failed is not None:
                raise rounds.failed
        except Exception as exc:  # the actor, its node or the relay failed: never hang the job
            if isinstance(exc, BackendError):
                error = exc
            elif isinstance(exc, RayError):
                error = _lost(actor, inv, exc)
            else:
                error = BackendError(f"relaying function {inv.func_id} failed: {exc!r}")
                error.__cause__ = exc
            self._release(actor, healthy=False)
            resolve(future, sync, inv.func_id, error)
            return
        finally:
            if offer is not None:
                self._rounds.withdraw(offer)
        healthy = not (isinstance(outcome, Failed) and outcome.replace_worker)
        self._release(actor, healthy=healthy)  # an unhealthy actor is killed; a new one starts
        resolve(future, sync, inv.func_id, outcome)

    def _offer_rounds(
        self, inv: Invocation, sync: SyncHandler | None, log: LogSink
    ) -> tuple[RoundOffer | None, _RoundRelay | None]:
        """A direct socket for a train invocation's rounds, when its weights travel by
        value (messages with object refs must stay in Ray's serialisation)."""
        if inv.mode is not Mode.TRAIN or sync is None:
            return None, None
        try:
            small = self.models.layout(inv.task_id).nbytes <= INLINE_BYTES
        except KubeMLError:
            return None, None
        if not small:
            return None, None
        offer, arrival = self._rounds.offer()
        end = functools.partial(self._rounds.withdraw, offer)
        relay = _RoundRelay(arrival, end, inv, sync, log, self._hooks)
        threading.Thread(target=relay.run, name=f"kubeml-rounds-{inv.func_id}", daemon=True).start()
        return offer, relay

    def cancel(self, task_id: str) -> None:
        with self._lock:
            doomed = [a for a in self._busy if a.task_id == task_id]
        for actor in doomed:
            self._kill(actor)  # its driver thread sees the actor die and fails the future

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            actors, self._idle, self._busy = self._idle + self._busy, [], []
        self._rounds.close()
        if ray.is_initialized():
            for actor in actors:
                self._kill(actor)
            self.datasets.close()
            self.models.close()
            if self._owns_ray:
                ray.shutdown()

    def cores(self) -> int:
        """The cluster's CPUs, not the control plane's: its machine may be a small one
        that runs no function."""
        return max(1, int(ray.cluster_resources().get("CPU", 0.0)))

    def describe(self) -> dict[str, Any]:
        with self._lock:
            actors = [(a, "idle") for a in self._idle] + [(a, "busy") for a in self._busy]
        workers = [
            {
                "node_id": a.node_id,
                "pid": a.pid,
                "state": state,
                "task_id": a.task_id,
                "last_task_id": a.last_task_id,
                "cpus": a.shape[0],
                "gpus": a.shape[1],
            }
            for a, state in actors
        ]
        pids: dict[str, list[int]] = {}
        for a, state in actors:
            if state == "busy" and a.pid is not None:
                pids.setdefault(a.task_id or "", []).append(a.pid)
        return {
            **super().describe(),
            "round_sockets": self._rounds.admitted,  # train invocations that used one
            "warm_workers": sum(1 for _, s in actors if s == "idle"),
            "busy_workers": sum(1 for _, s in actors if s == "busy"),
            "workers": workers,
            "worker_pids": pids,  # by task, as on the process backend (on the actors' nodes)
        }


def _lost(actor: _Actor, inv: Invocation, exc: BaseException) -> BackendError:
    text = str(exc)
    if "node has died" in text or "NodeDiedError" in type(exc).__name__:
        why = f"its Ray node {actor.node_id[:12]} left the cluster"
    else:
        first_line = text.strip().splitlines()[0] if text.strip() else "no details"
        why = (
            f"its Ray actor on node {actor.node_id[:12]} died ({first_line}); it may have run "
            "out of memory or been killed"
        )
    error = BackendError(
        f"function {inv.func_id} of task {inv.task_id} was lost: {why} ({type(exc).__name__})"
    )
    error.__cause__ = exc
    return error


def _fits(free: dict[str, float], need: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _take(free: dict[str, float], need: dict[str, float]) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v


def slot_cpus(
    nodes: list[dict[str, float]],
    capacity: int,
    gpus_per_function: float = 0.0,
    resources_per_function: dict[str, float] | None = None,
) -> float:
    """The CPUs a function reserves by default: the largest whole count s for which the
    live `nodes` (their resources) hold `capacity` functions of s CPUs, each with its GPUs
    and custom resources, so every function the scheduler admits can be placed; 1 when
    not even that holds them all (a capacity above the cluster: an autoscaling one)."""
    resources = resources_per_function or {}

    def holds(node: dict[str, float], cpus: int) -> int:
        count = int(node.get("CPU", 0.0) // cpus)
        if gpus_per_function:
            count = min(count, int(node.get("GPU", 0.0) // gpus_per_function))
        for name, amount in resources.items():
            count = min(count, int(node.get(name, 0.0) // amount))
        return count

    best, largest = 1, int(max((n.get("CPU", 0.0) for n in nodes), default=0.0))
    for cpus in range(2, largest + 1):  # fewer functions fit as each takes more
        if sum(holds(node, cpus) for node in nodes) < capacity:
            break
        best = cpus
    return float(best)


def _cluster_slots(cpus_per_function: float | None, gpus_per_function: float) -> int:
    """How many functions the cluster's resources hold at once (at least 1)."""
    total = ray.cluster_resources()
    slots = total.get("CPU", 0.0) / (cpus_per_function or 1.0)
    if gpus_per_function:
        slots = min(slots, total.get("GPU", 0.0) / gpus_per_function)
    return max(1, int(slots))


def _available() -> str:
    free = ray.available_resources()
    return ", ".join(f"{free.get(k, 0.0):g} {k}" for k in ("CPU", "GPU")) or "nothing"


def _describe_shape(shape: Shape, resources: dict[str, float]) -> str:
    parts = [f"{shape[0]:g} CPU"] + ([f"{shape[1]:g} GPU"] if shape[1] else [])
    parts += [f"{v:g} {k}" for k, v in resources.items()]
    return ", ".join(parts)
