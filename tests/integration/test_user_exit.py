"""User code that exits its worker fails the task clearly, and the worker is replaced."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kubeml.api.schemas import TaskState
from tests.conftest import function_source


def _worker_pids() -> set[int]:
    """This process's live process-backend workers, read from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[1]) == os.getpid() and b"process_worker" in cmdline:
            pids.add(int(entry.name))
    return pids


def _wait_for(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_sys_exit_in_train_fails_the_task_and_replaces_the_worker(make_engine, digits):
    engine = make_engine("process")
    engine.backend.spare_workers = 0  # count exactly the task's workers
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    engine.create_function("exits", function_source(EXIT_AT_BATCH=1))
    engine.backend.warm(2)
    first = _worker_pids()
    assert len(first) == 2
    task_id = engine.train(function="exits", dataset="digits", epochs=1, k=4)
    info = engine.wait(task_id, timeout_s=120)
    assert info.state is TaskState.FAILED
    assert "(func_id 0, train, epoch 0): train() raised SystemExit(0)" in info.error
    assert "sys.exit(0)" in info.traceback and "in _step" in info.traceback

    assert _wait_for(lambda: len(_worker_pids()) == 2), _worker_pids()
    before = _worker_pids()
    assert len(before & first) == 1  # function 0's worker is gone, a fresh one took its place
    engine.create_function("mlp", function_source())
    task_id = engine.train(function="mlp", dataset="digits", epochs=2, k=4, lr=0.05)
    info = engine.wait(task_id, timeout_s=120)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(task_id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert _worker_pids() == before  # the replacement served the next task warm
