"""The warm worker process of the process backend (the serverless "warm container").

It imports torch once, then runs invocations sent over its pipe, keeping each user
module imported, until it has been idle for `idle_timeout_s` (scale to zero), its parent
goes away, or the backend replaces it (after user code exited: see `relay.Failed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass

from kubeml.backends.relay import Endpoint, Invoke, PipeTransport, Shutdown, run_invocation
from kubeml.stores.datasets import LocalDatasetStore
from kubeml.stores.models import LocalModelStore


@dataclass(frozen=True)
class Hello:
    """A new worker's first message: who it is."""

    pid: int


@dataclass(frozen=True)
class Setup:
    """The parent's answer to `Hello`: the stores to read from (pickled as their paths)."""

    datasets: LocalDatasetStore
    models: LocalModelStore
    idle_timeout_s: float
    background: bool = False  # a spare: import at the lowest priority, beside training


def _import_runtime(background: bool) -> None:
    """Warm up once, while idle (`kubeml.runtime.execute.warm_up`). A spare started while a
    task trains does it on a thread niced to 19 (priority is per thread on Linux), so its
    seconds of CPU go to cores the training leaves idle; the main thread, which later runs
    invocations, keeps its normal priority."""

    def run() -> None:
        if background:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        import kubeml.runtime.execute
        import kubeml.sdk

        kubeml.runtime.execute.warm_up()

    importer = threading.Thread(target=run, name="kubeml-import")
    importer.start()
    importer.join()


def _exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Exit the moment the server is gone, even while user code runs (a worker stuck in a
    hook would otherwise live on as an orphan). Polling the parent pid, not
    PR_SET_PDEATHSIG: that signal fires when the *thread* that spawned us exits, and the
    server spawns workers from short-lived job threads."""
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent:
            os._exit(70)


def worker_main(address: str, authkey: bytes) -> None:
    from multiprocessing.connection import Client

    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="kubeml-watchdog"
    ).start()

    conn = Client(address, family="AF_UNIX", authkey=authkey)
    conn.send(Hello(os.getpid()))
    setup: Setup = conn.recv()
    _import_runtime(setup.background)
    logging.getLogger().setLevel(logging.INFO)  # what `run_invocation` sets: no per-call change

    endpoint = Endpoint(PipeTransport(conn))
    while True:
        try:
            if not conn.poll(setup.idle_timeout_s):
                return  # idle: scale to zero
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if isinstance(message, Shutdown) or not isinstance(message, Invoke):
            return
        run_invocation(endpoint, message.invocation, setup.datasets, setup.models)


if __name__ == "__main__":
    # Run the module imported under its own name, so the messages it sends pickle as
    # `kubeml.backends.process_worker.Hello`, not `__main__.Hello`.
    from kubeml.backends import process_worker

    process_worker.worker_main(sys.argv[1], bytes.fromhex(os.environ.pop("KUBEML_WORKER_AUTHKEY")))
