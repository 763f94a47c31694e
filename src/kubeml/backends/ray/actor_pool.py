"""The Ray backend's actors: started where the live nodes have room, waited for until they
are placed, kept warm in the backends' `WorkerPool`, and killed after `idle_timeout_s` idle
(scale to zero)."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError

from kubeml.backends.pool import Choose, PooledWorker, WorkerPool
from kubeml.backends.ray import cluster
from kubeml.backends.ray.function_actor import FunctionActor
from kubeml.backends.ray.placement import Resources, Shape, demand, describe_shape, has_room
from kubeml.errors import BackendError
from kubeml.runtime.invocation import Invocation, Mode


@dataclass(eq=False)
class RayActor(PooledWorker):
    """One `FunctionActor` of the pool, with what it reserves."""

    handle: Any
    shape: Shape
    node_id: str = "?"  # known once placed
    lane: tuple[str, int] | None = None  # (task, func_id) it trained last: it keeps its state

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.handle, no_restart=True)


class ActorPool:
    """Actors of a shape for a gang of invocations, started only where they fit.

    Args:
        resources_per_function: custom Ray resources each actor reserves.
        start_timeout_s: how long a gang may wait for its actors to be placed.
        wait_for_nodes: actors the live nodes have no room for wait up to
            `start_timeout_s` for new nodes (an autoscaling cluster); otherwise they fail
            at once.
        idle_timeout_s: an idle actor is killed after this long.
    """

    def __init__(
        self,
        *,
        resources_per_function: Resources,
        start_timeout_s: float,
        wait_for_nodes: bool,
        idle_timeout_s: float,
    ) -> None:
        self.resources_per_function = resources_per_function
        self.start_timeout_s = start_timeout_s
        self.wait_for_nodes = wait_for_nodes
        self.idle_timeout_s = idle_timeout_s
        self._remote = ray.remote(FunctionActor)
        self._workers: WorkerPool[RayActor] = WorkerPool("ray")
        self._closing = threading.Event()
        threading.Thread(target=self._reap_idle, name="kubeml-ray-reaper", daemon=True).start()

    def acquire(self, shape: Shape, count: int, task_id: str, light: bool) -> list[RayActor]:
        """`count` started actors of `shape`; a `light` invocation (init, infer) takes any
        warm actor rather than start one of its own shape."""

        def choose(
            idle: list[RayActor], busy: list[RayActor]
        ) -> tuple[list[RayActor], list[RayActor]]:
            fits = [a for a in idle if a.shape == shape]
            fits.sort(key=lambda a: a.last_task_id != task_id)  # the task's own first
            taken = fits[:count]
            if light:  # an actor that ran this task last may keep its model loaded
                warm = [a for a in idle if a.last_task_id == task_id]
                taken = (warm or taken or idle)[:count]
            missing = count - len(taken)
            if missing and not self._room(shape, missing, _placed(busy) + taken):
                raise self._no_room(missing, shape, task_id)
            # Idle actors of another shape hold resources the new ones may need.
            doomed = [a for a in idle if a not in taken] if missing else []
            return taken, doomed

        start = functools.partial(self._start, shape)
        actors = self._workers.acquire(count, task_id, start=start, choose=choose)
        return self._wait_started(actors, shape, task_id)

    def release(self, actor: RayActor, *, healthy: bool) -> None:
        self._workers.release(actor, healthy=healthy)

    def cancel(self, task_id: str) -> None:
        self._workers.cancel(task_id)  # their relays see the actors die and fail the futures

    def close(self) -> list[RayActor] | None:
        """Stop taking actors back; every actor it had, to kill (None: closed already)."""
        self._closing.set()
        return self._workers.close()

    def describe(self) -> dict[str, Any]:
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
            for a, state in self._workers.workers()
        ]
        return {**self._workers.describe(), "workers": workers}

    def _start(self, shape: Shape, count: int) -> list[RayActor]:
        options = self._remote.options(
            num_cpus=shape[0],
            num_gpus=shape[1],
            resources=self.resources_per_function,
            max_concurrency=4,  # run() streams while deliver() brings releases and answers
            max_restarts=0,
            enable_task_events=False,  # no event per call to Ray's head (see server_pool)
        )
        return [RayActor(options.remote(), shape) for _ in range(count)]

    def _wait_started(self, actors: list[RayActor], shape: Shape, task_id: str) -> list[RayActor]:
        """Wait until every actor of the gang is placed and alive; replace dead warm ones."""
        deadline = time.monotonic() + self.start_timeout_s
        for _ in range(3):
            unplaced, dead = self._ping(actors, shape, deadline)
            if unplaced:
                for actor in actors:
                    self.release(actor, healthy=actor not in unplaced and actor not in dead)
                if time.monotonic() < deadline:  # given up early: the nodes left are full
                    raise self._no_room(len(unplaced), shape, task_id)
                raise BackendError(
                    f"Ray could not place {len(unplaced)} of {len(actors)} function(s) of task "
                    f"{task_id} within {self.start_timeout_s:.0f} s, each needing "
                    f"{describe_shape(shape, self.resources_per_function)}; the cluster has "
                    f"{cluster.free()} free. Lower --parallelism or add nodes"
                )
            if not dead:
                return actors
            for actor in dead:
                self.release(actor, healthy=False)
            actors = [a for a in actors if a not in dead]
            try:
                actors += self._workers.acquire(
                    len(dead),
                    task_id,
                    start=functools.partial(self._start, shape),
                    choose=self._room_only(shape, len(dead), task_id),
                )
            except BackendError:
                for actor in actors:
                    self.release(actor, healthy=True)
                raise
        for actor in actors:
            self.release(actor, healthy=False)
        raise BackendError(f"the Ray actors for task {task_id} kept dying as they started")

    def _ping(
        self, actors: list[RayActor], shape: Shape, deadline: float
    ) -> tuple[list[RayActor], list[RayActor]]:
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
                placed = [a for a in _placed(self._workers.busy()) if a not in dead]
                if not self._room(shape, len(unplaced), placed):
                    break  # a node was lost while they waited
        return [pings[ref] for ref in waiting], dead

    def _room_only(self, shape: Shape, count: int, task_id: str) -> Choose[RayActor]:
        """A `choose` for `count` new actors: it takes no idle one, and refuses when the
        live nodes have no room for them."""

        def choose(
            idle: list[RayActor], busy: list[RayActor]
        ) -> tuple[list[RayActor], list[RayActor]]:
            if not self._room(shape, count, _placed(busy)):
                raise self._no_room(count, shape, task_id)
            return [], []

        return choose

    def _room(self, shape: Shape, count: int, occupied: list[RayActor]) -> bool:
        """Whether the live nodes could hold `count` more actors of `shape` beside the
        `occupied` ones (this backend's placed actors; other Ray users' are not known).
        Always True with `wait_for_nodes`: new nodes may come."""
        if self.wait_for_nodes:
            return True
        resources = self.resources_per_function
        held = [(a.node_id, demand(a.shape, resources)) for a in occupied]
        return has_room(cluster.live_nodes(), held, demand(shape, resources), count)

    def _no_room(self, count: int, shape: Shape, task_id: str) -> BackendError:
        return BackendError(
            f"no live Ray node has room for {count} more function(s) of task {task_id}, each "
            f"needing {describe_shape(shape, self.resources_per_function)} "
            f"({len(cluster.live_nodes())} live node(s), {cluster.free()} free). Lower "
            "--parallelism or add nodes"
        )

    def _reap_idle(self) -> None:
        period = min(10.0, max(0.5, self.idle_timeout_s / 4))
        while not self._closing.wait(period):
            self._workers.expire(self.idle_timeout_s)


def by_lane(actors: list[RayActor], invocations: Sequence[Invocation]) -> list[RayActor]:
    """The actors in the invocations' order, a train lane on the actor that trained it last
    where that is among them: it keeps the optimizer state the lane goes on with. Each
    actor given a train invocation now holds that lane."""
    free = list(actors)
    mine = [next((a for a in free if a.lane == (i.task_id, i.func_id)), None) for i in invocations]
    free = [a for a in free if a not in mine]
    chosen = [a if a is not None else free.pop(0) for a in mine]
    for actor, inv in zip(chosen, invocations, strict=True):
        if inv.mode is Mode.TRAIN:
            actor.lane = (inv.task_id, inv.func_id)
    return chosen


def _placed(actors: list[RayActor]) -> list[RayActor]:
    """The actors with a known node."""
    return [a for a in actors if a.node_id != "?"]
