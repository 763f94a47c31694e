"""The control plane's handles on the process backend's workers: starting them, each in
its memory cgroup before it runs user code, and what a dead one's invocation failed with."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Listener
from typing import Any

from kubeml.backends.cgroups import FunctionCgroup
from kubeml.backends.pool import PooledWorker
from kubeml.backends.process_worker import Hello, Setup
from kubeml.errors import BackendError, FunctionMemoryError, KubeMLError
from kubeml.runtime.invocation import Invocation


@dataclass(eq=False)
class ProcessWorker(PooledWorker):
    process: Any
    conn: Any
    served: list[str] = field(default_factory=list)  # tasks whose model it keeps, latest last
    cgroup: FunctionCgroup | None = None  # its memory cgroup, where limits are enforced

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()  # its relay's thread sees EOF and fails the invocation

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.conn.close()
        if self.cgroup is not None:
            self.cgroup.remove()

    def bound(self, memory_mb: int) -> bool:
        """Hold it to `memory_mb` (0: no bound) from its next invocation on; False when it
        uses more than that now (or its cgroup is gone): then another worker should go."""
        if self.cgroup is None:
            return True
        try:
            return self.cgroup.bound(memory_mb)
        except (OSError, ValueError):
            return False

    def death(self, inv: Invocation) -> KubeMLError:
        """What `inv` failed with, its worker dead: killed over its memory limit (the
        cgroup's record says so, not the SIGKILL alone), the user's code did it and would
        again (`FunctionMemoryError`); otherwise the worker was lost (`BackendError`)."""
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        cgroup = self.cgroup
        if cgroup is not None and code == -signal.SIGKILL and cgroup.killed_over_limit():
            return FunctionMemoryError(
                f"out of memory: function {inv.func_id} used more than {cgroup.limit_mb} MB, "
                "its limit (the kernel killed its worker); raise `train --memory-mb` or "
                "use less"
            )
        return BackendError(
            f"the worker running function {inv.func_id} of task {inv.task_id} died "
            f"(exit code {code}); it may have run out of memory or been killed"
        )


def bound_workers(
    idle: list[ProcessWorker], count: int, memory_mb: int
) -> tuple[list[ProcessWorker], list[ProcessWorker]]:
    """Up to `count` of the `idle` workers, in order, bound to `memory_mb` from now on;
    and those passed over because they hold more than that (to be closed: a fresh worker
    takes their place)."""
    taken: list[ProcessWorker] = []
    unfit: list[ProcessWorker] = []
    for worker in idle:
        if len(taken) == count:
            break
        (taken if worker.bound(memory_mb) else unfit).append(worker)
    return taken, unfit


def start_workers(
    count: int,
    listener: Listener,
    authkey: bytes,
    setup: Setup,
    confine: Callable[[int], FunctionCgroup | None],
) -> list[ProcessWorker]:
    """Start `count` workers at once and wait for each to connect to `listener`. Each is
    put into its cgroup (`confine(pid)`) before it gets its `setup`: until then it waits,
    having run no user code. If one fails, all are stopped."""
    env = {**os.environ, "KUBEML_WORKER_AUTHKEY": authkey.hex()}
    processes = {}
    for _ in range(count):
        process = subprocess.Popen(
            [sys.executable, "-m", "kubeml.backends.process_worker", listener.address],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        processes[process.pid] = process
    workers: list[ProcessWorker] = []
    try:
        for _ in range(count):
            conn = listener.accept()
            hello: Hello = conn.recv()
            worker = ProcessWorker(processes.pop(hello.pid), conn, pid=hello.pid)
            workers.append(worker)
            worker.cgroup = confine(hello.pid)
            conn.send(setup)
    except BaseException:
        for process in processes.values():
            process.kill()
            process.wait()
        for worker in workers:
            worker.close()
        raise
    return workers
