"""Process backend (the default): warm worker processes on this machine."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Listener
from typing import Any

from kubeml.backends.base import FunctionBackend, SyncHandler, fail_invocation
from kubeml.errors import BackendError
from kubeml.runtime.invocation import Invocation, InvocationResult, LogSink
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.models import ModelStore


@dataclass
class _Worker:
    process: Any
    conn: Any
    task_id: str | None = None
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.conn.close()


class ProcessBackend(FunctionBackend):
    """Runs each invocation in a warm worker process.

    Workers are fresh interpreters (`python -m kubeml.backends._worker`: no forked torch
    state, and the parent's `__main__` is never re-run), connected back over an
    authenticated Unix socket. They import torch once, and keep
    every user module they imported, so only the first invocation on a worker pays for
    imports. A worker goes away after `idle_timeout_s` without work. Each invocation sets
    torch's thread count to the `threads` the job chose (cores // N), so N workers do not
    oversubscribe the machine. Weights move through the shared-memory model store; only
    small messages (round reports, releases, log lines) cross the pipe.
    """

    name = "process"

    def __init__(
        self,
        datasets: DatasetStore,
        models: ModelStore,
        capacity: int = 2,
        idle_timeout_s: float = 300.0,
    ) -> None:
        super().__init__(capacity)
        self.datasets, self.models = datasets, models
        self.idle_timeout_s = idle_timeout_s
        self._authkey = secrets.token_bytes(32)
        self._socket_dir = tempfile.mkdtemp(prefix="kubeml-workers-")
        self._listener = Listener(
            os.path.join(self._socket_dir, "sock"), family="AF_UNIX", authkey=self._authkey
        )
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    # -- pool -------------------------------------------------------------------------------
    def _spawn(self, count: int) -> list[_Worker]:
        """Start `count` workers at once and wait for each to connect."""
        env = {**os.environ, "KUBEML_WORKER_AUTHKEY": self._authkey.hex()}
        processes = {}
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, "-m", "kubeml.backends._worker", self._listener.address],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            processes[process.pid] = process
        workers = []
        setup = ("setup", self.datasets, self.models, self.idle_timeout_s)
        for _ in range(count):
            conn = self._listener.accept()
            _, pid = conn.recv()
            conn.send(setup)
            workers.append(_Worker(processes.pop(pid), conn))
        return workers

    def warm(self, count: int) -> None:
        """Start workers ahead of demand, so the next task finds them warm."""
        with self._lock:
            self._idle = [w for w in self._idle if w.alive()]
            missing = max(0, count - len(self._idle))
            self._idle.extend(self._spawn(missing))

    def _acquire(self, count: int, task_id: str) -> list[_Worker]:
        with self._lock:
            if self._closed:
                raise BackendError("the process backend is closed")
            alive = [w for w in self._idle if w.alive()]
            for dead in (w for w in self._idle if not w.alive()):
                dead.conn.close()
            taken, self._idle = alive[:count], alive[count:]
            taken += self._spawn(count - len(taken))
            for worker in taken:
                worker.task_id = task_id
            self._busy.extend(taken)
            return taken

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self._lock:
            if worker in self._busy:
                self._busy.remove(worker)
            worker.task_id = None
            if healthy and not self._closed and worker.alive():
                self._idle.append(worker)
                return
        worker.kill()

    # -- invocations ------------------------------------------------------------------------
    def invoke(
        self, invocations: Sequence[Invocation], *, sync: SyncHandler | None, log: LogSink
    ) -> list[Future[InvocationResult]]:
        workers = self._acquire(len(invocations), invocations[0].task_id if invocations else "")
        futures = []
        for worker, inv in zip(workers, invocations, strict=True):
            future: Future[InvocationResult] = Future()
            future.set_running_or_notify_cancel()
            threading.Thread(
                target=self._drive,
                args=(worker, inv, sync, log, future),
                name=f"kubeml-drive-{inv.task_id}-{inv.func_id}",
                daemon=True,
            ).start()
            futures.append(future)
        return futures

    def _drive(
        self,
        worker: _Worker,
        inv: Invocation,
        sync: SyncHandler | None,
        log: LogSink,
        future: Future[InvocationResult],
    ) -> None:
        """Relay one invocation's messages between its worker and the job."""
        try:
            worker.conn.send(("invoke", inv))
            while True:
                kind, *payload = worker.conn.recv()
                if kind == "ready":
                    worker.ready = True
                elif kind == "log":
                    log(payload[0], payload[1])
                elif kind == "publish":
                    if sync is None:
                        raise BackendError("function published weights outside a train round")
                    worker.conn.send(("release", sync.publish(payload[0])))
                elif kind == "result":
                    self._release(worker, healthy=True)
                    future.set_result(payload[0])
                    return
                elif kind == "error":
                    self._release(worker, healthy=True)
                    fail_invocation(future, sync, inv.func_id, payload[0])
                    return
        except (EOFError, OSError, BrokenPipeError) as exc:
            try:
                code = worker.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
            error = BackendError(
                f"the worker running function {inv.func_id} of task {inv.task_id} died "
                f"(exit code {code}); it may have run out of memory or been killed"
            )
            error.__cause__ = exc
            self._release(worker, healthy=False)
            fail_invocation(future, sync, inv.func_id, error)

    def cancel(self, task_id: str) -> None:
        with self._lock:
            doomed = [w for w in self._busy if w.task_id == task_id]
        for worker in doomed:
            worker.process.kill()  # its driver thread sees EOF and fails the future

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._idle, self._busy = self._idle + self._busy, [], []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(("exit",))
        deadline = time.monotonic() + 3
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.01, deadline - time.monotonic()))
            worker.kill()
        self._listener.close()
        import shutil

        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            idle = sum(1 for w in self._idle if w.alive())
            busy = len(self._busy)
        return {**super().describe(), "warm_workers": idle, "busy_workers": busy}
