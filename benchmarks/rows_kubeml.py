"""kubeml rows: the workload's function trained by a running kubeml server, as a user meets it.

`run_kubeml` talks to one local server per workload (started once, through the same
`ensure_server` the CLI uses, on a fresh home and a free port, with the function and the
dataset uploaded and the workers warmed by a throw-away task, as on a server that has
run this function before). Each row submits one task over HTTP and polls it like
`kubeml train --watch` (every `POLL_S`); its time to the goal runs from the submit to the
poll that first shows the goal accuracy. Per-epoch figures come from the task history
(training time only) and the job's "epoch N:" log lines.

`fresh_engine` and friends drive an in-process `Engine` for the micro-benchmarks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.data import Arrays
from benchmarks.records import EpochLog, RowResult, Workload
from benchmarks.reference import FUNCTION_FILE, ROOT, free_port, now

FUNCTION, DATASET = "lenet", "fashion"  # the reference function reads the dataset "fashion"
_TIMEOUT_S = 3600.0
POLL_S = 0.25


@contextmanager
def fresh_engine(backend: str = "process", capacity: int = 2) -> Iterator[Any]:
    """An engine on a new temporary home, closed and wiped afterwards."""
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="kubeml-bench-"))
    settings = Settings(home=home, backend=backend, capacity=capacity)
    engine = Engine(settings)
    try:
        yield engine
    finally:
        engine.close()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(settings.scratch_dir(), ignore_errors=True)


def deploy_reference(engine: Any, data_dir: Path, workload: Workload | None = None) -> None:
    """Upload the workload's function and data (default: the reference LeNet, Fashion-MNIST)."""
    file = ROOT / workload.function_file if workload else FUNCTION_FILE
    engine.create_function(workload.function if workload else FUNCTION, file.read_text())
    arrays = Arrays.load(data_dir)
    engine.create_dataset(
        workload.dataset if workload else DATASET,
        arrays.train_x,
        arrays.train_y,
        arrays.test_x,
        arrays.test_y,
    )


def prewarm(engine: Any, workload: Workload, parallelism: int) -> None:
    """Leave `parallelism` warm workers that have imported torch and the function.

    `ProcessBackend.warm` returns once workers connect, before they import torch, so a
    throw-away task (K=1, stopped at once: it ends after one batch) finishes the job,
    as a server that has run this function before would have.
    """
    if hasattr(engine.backend, "warm"):
        engine.backend.warm(parallelism)
    warm_up_task(engine, train_request(workload, parallelism, 1, epochs=1, validate_every=0))


def warm_up_task(engine: Any, request: dict[str, Any], timeout_s: float = _TIMEOUT_S) -> None:
    """Run `request` until its first round is merged, then stop it: every function of the
    gang has then run (imports, model, optimizer). A stop sent at once would end the task
    before its first epoch starts, and warm nothing. `engine`: an Engine or a Client."""
    from kubeml.api.schemas import TaskState

    task_id = engine.train(**request)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = engine.get_task(task_id)
        if info.state.finished or info.round >= 1 or info.epoch >= 1:
            break
        time.sleep(0.02)
    engine.stop_task(task_id)
    info = engine.wait(task_id, timeout_s=timeout_s)
    if info.state not in (TaskState.STOPPED, TaskState.SUCCEEDED):
        raise RuntimeError(f"kubeml warm-up task {task_id} {info.state.value}: {info.error}")


def train_request(workload: Workload, parallelism: int, k: int, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "function": workload.function,
        "dataset": workload.dataset,
        "epochs": workload.epochs,
        "batch_size": workload.batch_size,
        "lr": workload.lr,
        "parallelism": parallelism,
        "k": k,
        "validate_every": 1,
        "goal_accuracy": workload.goal_accuracy,
        "seed": workload.seed,
        "static": True,
    }
    request.update(overrides)
    return request


def epoch_logs(lines: Any, epochs: Any, submitted: float) -> list[EpochLog]:
    """Per-epoch figures of a task from its history `epochs`; each epoch's elapsed time
    runs from `submitted` to the job's "epoch N:" line in the task log `lines`."""
    ends = {}
    for line in lines:
        if line.source == "job" and line.message.startswith("epoch "):
            head = line.message.split(":", 1)[0]
            ends[int(head.split()[1])] = line.time.timestamp()
    return [
        EpochLog(
            epoch=r.epoch,
            train_s=r.epoch_duration_s,
            samples=round(r.samples_per_s * r.epoch_duration_s),
            train_loss=r.train_loss,
            accuracy=r.accuracy if r.accuracy is not None else float("nan"),
            elapsed_s=ends[r.epoch] - submitted,
        )
        for r in epochs
    ]


def run_task(engine: Any, request: dict[str, Any]) -> tuple[float, str, list[EpochLog]]:
    """Submit one task and wait for it; returns (submit time, task id, epoch logs)."""
    from kubeml.api.schemas import TaskState

    submitted = now()
    task_id = engine.train(**request)
    info = engine.wait(task_id, timeout_s=_TIMEOUT_S)
    if info.state is not TaskState.SUCCEEDED:
        raise RuntimeError(f"kubeml task {task_id} {info.state.value}: {info.error}")
    logs = epoch_logs(engine.logs_of(task_id), engine.get_history(task_id).epochs, submitted)
    return submitted, task_id, logs


class Server:
    """A local kubeml server on a fresh home, with one workload's function and data."""

    def __init__(self, workload: Workload, capacity: int = 2) -> None:
        from kubeml.client import Client
        from kubeml.client.local_server import ensure_server
        from kubeml.settings import Settings

        started = now()
        self.home = Path(tempfile.mkdtemp(prefix="kubeml-bench-server-"))
        self.settings = Settings(home=self.home, port=free_port(), capacity=capacity)
        self.client = Client(ensure_server(self.settings, quiet=True), settings=self.settings)
        data = workload.data_dir
        self.client.create_function(workload.function, (ROOT / workload.function_file).read_text())
        self.client.create_dataset(
            workload.dataset,
            *(data / f"{part}.npy" for part in ("train_x", "train_y", "test_x", "test_y")),
        )
        self.warm(workload, capacity)
        self.startup_s = now() - started

    def warm(self, workload: Workload, parallelism: int) -> None:
        """Leave `parallelism` workers that have imported torch and the function and
        trained a round (a K=1 task stopped after its first round)."""
        warm_up_task(
            self.client, train_request(workload, parallelism, 1, epochs=1, validate_every=0)
        )

    def close(self) -> None:
        from kubeml.client.local_server import stop_server

        self.client.close()
        stop_server(self.settings)
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.settings.scratch_dir(), ignore_errors=True)


_servers: dict[tuple[str, str], Server] = {}


def server_for(workload: Workload) -> Server:
    key = (workload.name, str(workload.data_dir))
    if key not in _servers:
        _servers[key] = Server(workload)
    return _servers[key]


def close_servers() -> None:
    while _servers:
        _servers.popitem()[1].close()


def run_kubeml(workload: Workload, name: str, settings: dict[str, Any]) -> RowResult:
    """One task on the workload's running server: `settings` are the TrainRequest fields
    the row sets beyond the workload's own (empty: kubeml's defaults)."""
    from kubeml.api.schemas import TaskState

    server = server_for(workload)
    request = {
        "function": workload.function,
        "dataset": workload.dataset,
        "epochs": workload.epochs,
        "batch_size": workload.batch_size,
        "lr": workload.lr,
        "validate_every": 1,
        "goal_accuracy": workload.goal_accuracy,
        "seed": workload.seed,
        **settings,
    }
    parallelism = int(settings.get("parallelism", 2))
    server.warm(workload, parallelism)
    api = server.client
    submitted = now()
    task_id = api.train(**request)
    seen_goal: float | None = None
    while True:  # as `kubeml train --watch` does, a little more often
        info = api.get_task(task_id)
        if (
            seen_goal is None
            and info.accuracy is not None
            and info.accuracy >= workload.goal_accuracy
        ):
            seen_goal = now() - submitted
        if info.state.finished:
            break
        if now() - submitted > _TIMEOUT_S:
            api.stop_task(task_id)
            raise RuntimeError(f"kubeml task {task_id} ran past {_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    if info.state is not TaskState.SUCCEEDED:
        raise RuntimeError(f"kubeml task {task_id} {info.state.value}: {info.error}")
    history = api.get_history(task_id).epochs
    logs = epoch_logs(api.logs(task_id), history, submitted)
    goal = next((e for e in logs if e.accuracy >= workload.goal_accuracy), None)
    if goal is not None and seen_goal is not None:
        goal.elapsed_s = seen_goal  # the moment the user's client saw it
    return RowResult(
        name=name,
        framework="kubeml",
        parallelism=history[-1].parallelism if history else parallelism,
        k=int(info.request.k),
        startup_s=server.startup_s,
        epochs=logs,
        wall_s=now() - submitted,
        goal_accuracy=workload.goal_accuracy,
        notes=json.dumps(
            {
                "settings": settings,
                "request": info.request.model_dump(mode="json"),
                "parallelism_per_epoch": [r.parallelism for r in history],
            }
        ),
    )
