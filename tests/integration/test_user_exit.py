"""User code that exits its worker fails the task clearly, and the worker is replaced."""

from __future__ import annotations

from kubeml.api.schemas import TaskState
from tests.conftest import function_source
from tests.integration.conftest import wait_until, worker_pids


def test_sys_exit_in_train_fails_the_task_and_replaces_the_worker(make_engine, digits):
    engine = make_engine("process")
    engine.backend.spare_workers = 0  # count exactly the task's workers
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    engine.create_function("exits", function_source(EXIT_AT_BATCH=1))
    engine.backend.warm(2)
    first = worker_pids()
    assert len(first) == 2
    task_id = engine.train(function="exits", dataset="digits", epochs=1, k=4)
    info = engine.wait(task_id, timeout_s=120)
    assert info.state is TaskState.FAILED
    assert "(func_id 0, train, epoch 0): train() raised SystemExit(0)" in info.error
    assert "sys.exit(0)" in info.traceback and "in _step" in info.traceback

    assert wait_until(lambda: len(worker_pids()) == 2), worker_pids()
    before = worker_pids()
    assert len(before & first) == 1  # function 0's worker is gone, a fresh one took its place
    engine.create_function("mlp", function_source())
    task_id = engine.train(function="mlp", dataset="digits", epochs=2, k=4, lr=0.05)
    info = engine.wait(task_id, timeout_s=120)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(task_id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert worker_pids() == before  # the replacement served the next task warm
