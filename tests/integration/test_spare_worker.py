"""The process backend's spare worker: started beside a training task at the lowest CPU
priority, so it does not slow that task, and taken last, so a task runs on a worker that
has the user's modules loaded."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kubeml.api.schemas import TaskState
from kubeml.procs import cpu_ticks
from tests.conftest import function_source
from tests.integration.conftest import wait_until, worker_pids


def _threads(pid: int) -> dict[int, tuple[int, int]]:
    """{thread id: (nice, CPU ticks)} of a live process."""
    threads = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        threads[int(stat.parent.name)] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return threads


def _settle(pid: int, timeout_s: float = 60.0) -> None:
    deadline, last = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline and cpu_ticks(pid) != last:
        last = cpu_ticks(pid)
        time.sleep(0.5)


def test_spare_imports_at_low_priority_and_is_taken_last(make_engine, digits):
    engine = make_engine("process")
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    engine.create_function("mlp", function_source())
    engine.backend.warm(1)
    [first] = worker_pids()
    task_id = engine.train(function="mlp", dataset="digits", epochs=1, k=4, parallelism=1)
    assert engine.wait(task_id, timeout_s=120).state is TaskState.SUCCEEDED

    assert wait_until(lambda: len(worker_pids()) == 2), worker_pids()  # the spare
    [spare] = worker_pids() - {first}
    # its import ran on a thread niced to 19; the thread that runs invocations is not niced
    assert wait_until(lambda: any(nice == 19 for nice, _ in _threads(spare).values()))
    assert _threads(spare)[spare][0] == os.getpriority(os.PRIO_PROCESS, 0)
    assert all(nice == 0 for nice, _ in _threads(first).values())

    _settle(spare)  # the spare has finished importing: its CPU time stands still
    spare_before, first_before = cpu_ticks(spare), cpu_ticks(first)
    task_id = engine.train(
        function="mlp", dataset="digits", epochs=6, k=4, parallelism=1, static=True
    )
    info = engine.wait(task_id, timeout_s=120)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(task_id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert cpu_ticks(first) - first_before >= 5  # the worker that ran before trained it
    assert cpu_ticks(spare) - spare_before <= 2  # the spare stayed idle
