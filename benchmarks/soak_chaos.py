"""The soak's moving parts beside its tasks: the server it kills and brings back, the
killer, the uploads and inferences in between, and the check that nothing is left behind.

Only processes this run started are killed, by pid: a server is one whose pid this run's
`ensure_server` wrote into the home's `server.json`, and a worker is a live child of that
server whose pid names one of the soak's function records written in the last second
(a worker training now; an idle spare or one serving `infer` is left alone).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubeml.client import Client, ensure_server, server_status
from kubeml.errors import AlreadyExistsError, KubeMLError, ServerUnavailableError
from kubeml.procs import children, pid_alive
from kubeml.settings import Settings

T = TypeVar("T")
CGROUPS = Path("/sys/fs/cgroup")


class LocalServer:
    """The soak's server process: calls through it bring it back (as the CLI's auto-start
    does) when it is down, and wait for it up to `timeout_s`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pids: set[int] = set()  # every server this run started
        self._client: Client | None = None
        self._lock = threading.Lock()

    def client(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(ensure_server(self.settings, quiet=True), token="")
                status = server_status(self.settings)
                if status is not None and "pid" in status:
                    self.pids.add(int(status["pid"]))
            return self._client

    def call(self, op: Callable[[Client], T], timeout_s: float = 300.0) -> T:
        """`op(client)`, again after the server came back while it was down."""
        deadline = time.monotonic() + timeout_s
        while True:
            client = None
            try:
                client = self.client()
                return op(client)
            except ServerUnavailableError:
                if time.monotonic() > deadline:
                    raise
                with self._lock:
                    if self._client is client:
                        self._client = None
                time.sleep(0.2)

    def submit(self, request: dict[str, Any]) -> str:
        """Queue a train task once: a POST the server died under may have been taken, and
        the restarted server then lists the task (a new id with this function)."""
        known = {task.id for task in self.call(lambda c: c.list_tasks())}

        def once(client: Client) -> str:
            for task in client.list_tasks():
                if task.id not in known and task.request.function == request["function"]:
                    return task.id
            return client.train(**request)

        return self.call(once)

    def create(self, op: Callable[[Client], Any]) -> None:
        """A create that may have been taken before the server died under it."""
        with contextlib.suppress(AlreadyExistsError):
            self.call(op)

    def pid(self) -> int | None:
        """The running server's pid, if this run started it."""
        status = server_status(self.settings)
        pid = None if status is None else status.get("pid")
        return int(pid) if pid is not None and int(pid) in self.pids else None

    def kill(self) -> int | None:
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            return None
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # ensure_server's child: reaped here, no zombie
        return pid


class Killer(threading.Thread):
    """SIGKILLs a training worker every `worker_every_s` and the server every
    `server_every_s` (uniform draws); `kills` lists (monotonic time, what, pid)."""

    def __init__(
        self,
        server: LocalServer,
        worker_every_s: tuple[float, float],
        server_every_s: tuple[float, float],
        rng: random.Random,
    ) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.server, self.rng = server, rng
        self.worker_every_s, self.server_every_s = worker_every_s, server_every_s
        self.records: list[Path] = []  # the record folders of the tasks training now
        self.kills: list[tuple[float, str, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        now = time.monotonic()
        next_worker = now + self.rng.uniform(*self.worker_every_s)
        next_server = now + self.rng.uniform(*self.server_every_s)
        while not self.done.wait(0.1):
            now = time.monotonic()
            if now >= next_server:
                pid = self.server.kill()
                if pid is not None:
                    self.kills.append((now, "server", pid))
                    next_server = now + self.rng.uniform(*self.server_every_s)
            elif now >= next_worker:
                pid = self._training_worker()
                if pid is not None:  # else nothing trains now: look again in 0.1 s
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append((now, "worker", pid))
                    next_worker = now + self.rng.uniform(*self.worker_every_s)

    def _training_worker(self) -> int | None:
        server = self.server.pid()
        if server is None:
            return None
        workers = set(children(server, "process_worker"))
        fresh = time.time() - 1.0
        training = set()
        for folder in self.records:
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.stat().st_mtime >= fresh:
                            training.add(int(entry.name.split(".")[0]))
            except (OSError, ValueError):
                continue  # not written yet
        candidates = sorted(workers & training)
        return self.rng.choice(candidates) if candidates else None


class Traffic(threading.Thread):
    """Uploads a small dataset and asks for predictions, by turns, every `every_s`; counts
    what worked, what waited for the server, and what failed otherwise."""

    def __init__(
        self,
        server: LocalServer,
        every_s: tuple[float, float],
        upload: list[Path],
        infer: tuple[str, list[Any], list[Any]],  # task id, samples, the expected answer
        rng: random.Random,
    ) -> None:
        super().__init__(name="soak-traffic", daemon=True)
        self.server, self.every_s, self.upload, self.infer, self.rng = (
            server, every_s, upload, infer, rng,
        )  # fmt: skip
        self.uploaded: list[str] = []
        self.inferred = 0
        self.problems: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.done.wait(self.rng.uniform(*self.every_s)):
            turn += 1
            try:
                if turn % 2:
                    name = f"upload-{turn}"
                    self.server.create(lambda c, n=name: c.create_dataset(n, *self.upload))
                    self.uploaded.append(name)
                else:
                    task_id, samples, expected = self.infer
                    got = self.server.call(lambda c, i=task_id, s=samples: c.infer(i, s))
                    if got != expected:
                        self.problems.append(f"infer {turn}: {got} instead of {expected}")
                    self.inferred += 1
            except KubeMLError as exc:
                self.problems.append(f"turn {turn}: {type(exc).__name__}: {exc}")


def leftovers(settings: Settings, server_pids: set[int], wait_s: float = 10.0) -> list[str]:
    """What this run's servers left behind, once stopped: processes (anything whose
    environment names this home: servers and workers), the home's shared-memory scratch,
    the servers' socket folders and their workers' memory cgroups."""
    home = f"KUBEML_HOME={Path(settings.home).expanduser().resolve()}\0".encode()
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if int(environ.parent.name) != os.getpid() and home in environ.read_bytes():
                    alive.append(f"process {environ.parent.name} still runs")
            except (OSError, ValueError):
                continue
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    scratch = settings.scratch_dir()
    found = alive + ([f"scratch {scratch} still exists"] if scratch.exists() else [])
    for pid in sorted(server_pids):
        for path in Path(tempfile.gettempdir()).glob(f"kubeml-workers-{pid}-*"):
            found.append(f"socket folder {path}")
        for root in (CGROUPS / "memory", CGROUPS):  # v1, v2: the workers' memory cgroups
            found += [f"memory cgroup {path}" for path in root.glob(f"kubeml-{pid}-*")]
    return found
