"""Process backend (the default): warm worker processes on this machine."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from kubeml.backends.base import FunctionBackend, SyncHandler, note_unbounded
from kubeml.backends.cgroups import MemoryLimits
from kubeml.backends.pool import WorkerPool
from kubeml.backends.process_handles import ProcessWorker as _Worker
from kubeml.backends.process_handles import bound_workers, start_workers
from kubeml.backends.process_worker import Setup
from kubeml.backends.relay import (
    Done,
    Failed,
    PipeTransport,
    RelayHooks,
    Shutdown,
    drive,
    drive_async,
    resolve,
    start_gang,
)
from kubeml.errors import BackendError, KubeMLError
from kubeml.procs import pid_alive
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink, Mode
from kubeml.runtime.serving import MAX_SERVED_MODELS
from kubeml.stores.datasets import LocalDatasetStore
from kubeml.stores.models import LocalModelStore


class ProcessBackend(FunctionBackend):
    """Runs each invocation in a warm worker process.

    Workers are fresh interpreters (`python -m kubeml.backends.process_worker`: no forked torch
    state, and the parent's `__main__` is never re-run), connected back over an
    authenticated Unix socket. They import torch once, and keep
    every user module they imported, so only the first invocation on a worker pays for
    imports. A worker goes away after `idle_timeout_s` without work. Each invocation sets
    torch's thread count to the `threads` the job chose (cores // N), so N workers do not
    oversubscribe the machine. Weights move through the shared-memory model store; only
    small messages (round reports, releases, log lines) cross the pipe.

    An inference goes to a worker that served the task before, if one is idle: it keeps
    the model loaded (`kubeml.runtime.serving`). Its relay runs on a reused thread, not a
    new one per call.

    Where the server may create memory cgroups, each worker runs in its own
    (`kubeml.backends.cgroups`), bound at each invocation to the task's `memory_mb` (or
    the default here; 0: none); a warm worker holding more than that is replaced.
    """

    name = "process"
    datasets: LocalDatasetStore
    models: LocalModelStore

    def __init__(
        self,
        datasets: LocalDatasetStore,
        models: LocalModelStore,
        capacity: int = 2,
        idle_timeout_s: float = 300.0,
        spare_workers: int = 1,
        memory_mb: int = 0,
        memory: MemoryLimits | None = None,
    ) -> None:
        super().__init__(capacity)
        self.datasets, self.models = datasets, models
        self.idle_timeout_s = idle_timeout_s
        self.memory_mb = memory_mb  # a function's bound when its task sets none; 0: none
        self._memory = memory if memory is not None else MemoryLimits.detect()
        default = f"{memory_mb} MB" if memory_mb else "unlimited"
        self.memory_limit = f"{self._memory.describe()}; default {default}"
        self.spare_workers = spare_workers  # idle beside the busy ones: costs memory, no CPU
        self._authkey = secrets.token_bytes(32)
        _sweep_socket_dirs()
        self._socket_dir = tempfile.mkdtemp(prefix=f"{_SOCKET_PREFIX}{os.getpid()}-")
        self._listener = Listener(
            os.path.join(self._socket_dir, "sock"), family="AF_UNIX", authkey=self._authkey
        )
        self._pool: WorkerPool[_Worker] = WorkerPool(self.name)
        self._serving = ThreadPoolExecutor(max_workers=64, thread_name_prefix="kubeml-serve")
        atexit.register(self.close)

    # -- pool -------------------------------------------------------------------------------
    def _spawn(
        self, count: int, background: bool = False, memory_mb: int | None = None
    ) -> list[_Worker]:
        """Start `count` workers at once and wait for each to connect (with the pool's lock
        held: each connects to the one listener). `background` ones import torch at the
        lowest CPU priority (spares started beside a training task). Each joins its memory
        cgroup, bound to `memory_mb` (None: the default), before it is told to go on."""
        limit = self.memory_mb if memory_mb is None else memory_mb
        setup = Setup(self.datasets, self.models, self.idle_timeout_s, background)
        confine = functools.partial(self._memory.confine, limit_mb=limit)
        return start_workers(count, self._listener, self._authkey, setup, confine)

    def warm(self, count: int, background: bool = False) -> None:
        """Start workers ahead of demand, so the next task finds them warm."""
        self._pool.top_up(count, functools.partial(self._spawn, background=background))

    def _acquire(
        self, count: int, inv: Invocation, serving: bool = False, spawn: bool = True
    ) -> list[_Worker]:
        """`count` workers for `inv`'s task, bound to its memory limit; with `spawn` False
        only idle ones (maybe none)."""
        task_id, limit = inv.task_id, inv.memory_mb or self.memory_mb

        def choose(idle: list[_Worker], busy: list[_Worker]) -> tuple[list[_Worker], list[_Worker]]:
            # First the workers that hold this task's model loaded (serving), then those
            # that ran anything (the user's modules imported), the spares last.
            idle.sort(key=lambda w: (serving and task_id not in w.served, w.runs == 0))
            return bound_workers(idle, count, limit)

        start = functools.partial(self._spawn, memory_mb=limit) if spawn else None
        taken = self._pool.acquire(count, task_id, start=start, choose=choose)
        if self.spare_workers > self._pool.idle_count():
            # a lost worker's replacement then starts warm, not from `import torch`
            threading.Thread(
                target=self.warm,
                args=(self.spare_workers, True),
                daemon=True,
                name="kubeml-spare",
            ).start()
        return taken

    # -- invocations ------------------------------------------------------------------------
    def invoke(
        self, invocations: Sequence[Invocation], *, sync: SyncHandler | None, log: LogSink
    ) -> list[Future[InvocationResult]]:
        if not invocations:
            return []
        task_id = invocations[0].task_id
        serving = len(invocations) == 1 and invocations[0].mode is Mode.INFER
        if not self._memory.enforced:
            note_unbounded(self, invocations[0], log, self.memory_mb)
        workers = self._acquire(len(invocations), invocations[0], serving)
        if serving:
            self._serves(workers[0], task_id)
            future: Future[InvocationResult] = Future()
            future.set_running_or_notify_cancel()
            self._serving.submit(self._drive, workers[0], invocations[0], sync, log, future)
            return [future]

        def run(index: int, inv: Invocation, future: Future[InvocationResult]) -> None:
            self._drive(workers[index], inv, sync, log, future)

        return start_gang(invocations, run, "drive")

    async def serve(
        self, invocation: Invocation, *, log: LogSink, timeout_s: float
    ) -> InvocationResult:
        """An inference relayed on the event loop itself, which watches the worker's socket:
        no thread hand-off on the way in or out (about 1 ms of a warm call). Starting a
        worker blocks, so with none idle the call goes the threaded way."""
        taken = self._acquire(1, invocation, serving=True, spawn=False)
        if not taken:
            return await super().serve(invocation, log=log, timeout_s=timeout_s)
        worker = taken[0]
        self._serves(worker, invocation.task_id)
        try:
            outcome = await asyncio.wait_for(
                drive_async(PipeTransport(worker.conn), invocation, log, _HOOKS), timeout_s
            )
        except TimeoutError:  # before OSError, its base class
            # Killed (off the loop: it waits for the exit), so its late answer never
            # reaches the next call.
            await asyncio.to_thread(functools.partial(self._pool.release, worker, healthy=False))
            raise BackendError(
                f"the inference of task {invocation.task_id} ran past {timeout_s:g} s; its "
                "worker was stopped"
            ) from None
        except (EOFError, OSError) as exc:  # waiting for the dead process may block
            raise await asyncio.to_thread(self._lost, worker, invocation, exc) from exc
        except BaseException:  # cancelled mid-call: the worker's state is unknown
            self._pool.release(worker, healthy=False)
            raise
        self._worker_done(worker, outcome)
        if isinstance(outcome, Failed):
            raise outcome.error
        return outcome.result

    def _serves(self, worker: _Worker, task_id: str) -> None:
        kept = [t for t in worker.served if t != task_id] + [task_id]
        worker.served = kept[-MAX_SERVED_MODELS:]  # as the worker's own cache keeps them

    def _drive(
        self,
        worker: _Worker,
        inv: Invocation,
        sync: SyncHandler | None,
        log: LogSink,
        future: Future[InvocationResult],
    ) -> None:
        """Relay one invocation between its worker and the job."""
        try:
            outcome = drive(PipeTransport(worker.conn), inv, sync, log, _HOOKS)
        except (EOFError, OSError) as exc:
            resolve(future, sync, inv.func_id, self._lost(worker, inv, exc))
            return
        self._worker_done(worker, outcome)
        resolve(future, sync, inv.func_id, outcome)

    def _worker_done(self, worker: _Worker, outcome: Done | Failed) -> None:
        """A worker whose user code exited is replaced; any other goes back to the pool."""
        if isinstance(outcome, Failed) and outcome.replace_worker:
            self._replace(worker)
        else:
            self._pool.release(worker, healthy=True)

    def _lost(self, worker: _Worker, inv: Invocation, exc: BaseException) -> KubeMLError:
        """A dead worker is dropped (the next task spawns what it lacks); its invocation
        failed with what killed it (`ProcessWorker.death`)."""
        error = worker.death(inv)
        error.__cause__ = exc
        self._pool.release(worker, healthy=False)
        return error

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker that cannot be trusted and start a warm one in its place."""
        self._pool.release(worker, healthy=False)
        if not self._pool.closed:
            threading.Thread(
                target=self._warm_one, name="kubeml-replace-worker", daemon=True
            ).start()

    def _warm_one(self) -> None:
        # If this fails, the next task spawns the worker it lacks itself.
        with contextlib.suppress(Exception):
            self._pool.add(1, self._spawn)

    def cancel(self, task_id: str) -> None:
        self._pool.cancel(task_id)

    def close(self) -> None:
        workers = self._pool.close()
        if workers is None:
            return
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(Shutdown())
        deadline = time.monotonic() + 3
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.01, deadline - time.monotonic()))
            worker.close()
        self._listener.close()
        self._serving.shutdown(wait=False)
        import shutil

        shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._memory.close()
        self.models.release_scratch()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self._pool.describe()}


_SOCKET_PREFIX = "kubeml-workers-"


def _sweep_socket_dirs() -> None:
    """Remove the socket folders of process backends whose server died (their pid is in
    the name) and so never cleaned up."""
    import shutil

    for path in Path(tempfile.gettempdir()).glob(f"{_SOCKET_PREFIX}*-*"):
        pid = path.name.removeprefix(_SOCKET_PREFIX).split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


_HOOKS = RelayHooks()  # local stores: weights and data never cross the pipe
