"""The warm worker process of the process backend (the serverless "warm container").

It imports torch once, then serves invocations sent over its pipe, keeping each user
module imported, until it has been idle for `idle_timeout_s` (scale to zero) or its
parent goes away.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from typing import Any

from kubeml.errors import FunctionError, KubeMLError
from kubeml.runtime.invocation import Invocation
from kubeml.runtime.sync import Release, RoundReport
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.models import ModelStore


class _Pipe:
    """The worker's end of its pipe; sends may come from user threads, so they lock."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.conn.send(message)

    def log(self, source: str, message: str) -> None:
        self.send(("log", source, message))

    def publish(self, report: RoundReport) -> Release:
        self.send(("publish", report))
        kind, release = self.conn.recv()
        if kind != "release":
            raise KubeMLError(f"worker protocol error: expected a release, got {kind!r}")
        return release


class _LineWriter(io.TextIOBase):
    """Stands in for stdout/stderr during an invocation; whole lines go to the task log."""

    def __init__(self, pipe: _Pipe, source: str) -> None:
        self.pipe, self.source, self._buffer = pipe, source, ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self.pipe.log(self.source, line)
        return len(text)

    def flush(self) -> None:
        if self._buffer.strip():
            self.pipe.log(self.source, self._buffer)
        self._buffer = ""


def _serve(pipe: _Pipe, inv: Invocation, datasets: DatasetStore, models: ModelStore) -> None:
    from kubeml.runtime.execute import SinkHandler, execute

    forget = getattr(models, "forget_other_tasks", None)
    if forget is not None:
        forget(inv.task_id)
    source = f"function-{inv.func_id}"
    root = logging.getLogger()
    handler = SinkHandler(pipe.log, source)
    saved_level, saved_out, saved_err = root.level, sys.stdout, sys.stderr
    out = _LineWriter(pipe, source)
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # the seed logs its progress with logging.info
    sys.stdout = sys.stderr = out
    try:
        result = execute(inv, datasets=datasets, models=models, sync=pipe, log=pipe.log)
    except BaseException as exc:
        error = exc if isinstance(exc, KubeMLError) else FunctionError(repr(exc))
        out.flush()
        pipe.send(("error", error))
    else:
        out.flush()
        pipe.send(("result", result))
    finally:
        sys.stdout, sys.stderr = saved_out, saved_err
        root.removeHandler(handler)
        root.setLevel(saved_level)


def worker_main(address: str, authkey: bytes) -> None:
    from multiprocessing.connection import Client

    conn = Client(address, family="AF_UNIX", authkey=authkey)
    conn.send(("hello", os.getpid()))
    _, datasets, models, idle_timeout_s = conn.recv()

    import torch  # noqa: F401 - import once, while idle, not on the first invocation

    import kubeml.runtime.execute
    import kubeml.sdk  # noqa: F401

    pipe = _Pipe(conn)
    pipe.send(("ready", os.getpid()))
    while True:
        try:
            if not conn.poll(idle_timeout_s):
                return  # idle: scale to zero
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == "exit":
            return
        _serve(pipe, message[1], datasets, models)


if __name__ == "__main__":
    worker_main(sys.argv[1], bytes.fromhex(os.environ.pop("KUBEML_WORKER_AUTHKEY")))
