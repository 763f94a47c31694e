"""kubeml rows: `examples/lenet_fashion.py` trained through the real engine and process backend.

Each row gets a fresh engine on a fresh home (start-up: engine, function and dataset
upload, N workers warmed by a throw-away task), then one train task with a static N.
Per-epoch figures come from the task history (training time only) and from the job's
"epoch N:" log lines, written after each epoch's validation, for the time to the goal.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.data import Arrays
from benchmarks.records import EpochLog, RowResult, Workload
from benchmarks.reference import FUNCTION_FILE, now

FUNCTION, DATASET = "lenet", "fashion"  # the function file reads the dataset "fashion"
_TIMEOUT_S = 3600.0


@contextmanager
def fresh_engine(backend: str = "process", capacity: int = 2) -> Iterator[Any]:
    """An engine on a new temporary home, closed and wiped afterwards."""
    from kubeml.control.engine import Engine
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


def deploy_reference(engine: Any, data_dir: Path) -> None:
    """Upload the LeNet function and Fashion-MNIST."""
    engine.create_function(FUNCTION, FUNCTION_FILE.read_text())
    arrays = Arrays.load(data_dir)
    engine.create_dataset(DATASET, arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y)


def prewarm(engine: Any, workload: Workload, parallelism: int) -> None:
    """Leave `parallelism` warm workers that have imported torch and the function.

    `ProcessBackend.warm` returns once workers connect, before they import torch, so a
    throw-away task (K=1, stopped at once: it ends after one batch) finishes the job,
    as a server that has run this function before would have.
    """
    from kubeml.api.schemas import TaskState

    if hasattr(engine.backend, "warm"):
        engine.backend.warm(parallelism)
    task_id = engine.train(**train_request(workload, parallelism, 1, epochs=1, validate_every=0))
    engine.stop_task(task_id)
    info = engine.wait(task_id, timeout_s=_TIMEOUT_S)
    if info.state not in (TaskState.STOPPED, TaskState.SUCCEEDED):
        raise RuntimeError(f"kubeml warm-up task {task_id} {info.state.value}: {info.error}")


def train_request(workload: Workload, parallelism: int, k: int, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "function": FUNCTION,
        "dataset": DATASET,
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


def epoch_end_times(engine: Any, task_id: str) -> dict[int, float]:
    """Wall time at which the job logged each finished (and validated) epoch."""
    ends = {}
    for line in engine.logs_of(task_id):
        if line.source == "job" and line.message.startswith("epoch "):
            head = line.message.split(":", 1)[0]
            ends[int(head.split()[1])] = line.time.timestamp()
    return ends


def run_task(engine: Any, request: dict[str, Any]) -> tuple[float, str, list[EpochLog]]:
    """Submit one task and wait for it; returns (submit time, task id, epoch logs)."""
    from kubeml.api.schemas import TaskState

    submitted = now()
    task_id = engine.train(**request)
    info = engine.wait(task_id, timeout_s=_TIMEOUT_S)
    if info.state is not TaskState.SUCCEEDED:
        raise RuntimeError(f"kubeml task {task_id} {info.state.value}: {info.error}")
    ends = epoch_end_times(engine, task_id)
    logs = [
        EpochLog(
            epoch=r.epoch,
            train_s=r.epoch_duration_s,
            samples=round(r.samples_per_s * r.epoch_duration_s),
            train_loss=r.train_loss,
            accuracy=r.accuracy if r.accuracy is not None else float("nan"),
            elapsed_s=ends[r.epoch] - submitted,
        )
        for r in engine.get_history(task_id).epochs
    ]
    return submitted, task_id, logs


def run_kubeml(
    workload: Workload, parallelism: int, k: int, optimizer_state: str = "keep"
) -> RowResult:
    """One kubeml row on the process backend (the default)."""
    row_start = now()
    with fresh_engine(capacity=max(2, parallelism)) as engine:
        deploy_reference(engine, workload.data_dir)
        prewarm(engine, workload, parallelism)
        request = train_request(workload, parallelism, k, optimizer_state=optimizer_state)
        submitted, _, logs = run_task(engine, request)
    suffix = "" if optimizer_state == "keep" else f" {optimizer_state}"
    return RowResult(
        name=f"kubeml N={parallelism} K={k}{suffix}",
        framework="kubeml",
        parallelism=parallelism,
        k=k,
        startup_s=submitted - row_start,
        epochs=logs,
        wall_s=now() - row_start,
        goal_accuracy=workload.goal_accuracy,
        notes=f"optimizer_state={optimizer_state}",
    )
