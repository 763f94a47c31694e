"""The local Ray kubeml starts itself (`kubeml server start --backend ray`, no address)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import function_source

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray", reason="the ray extra is not installed")


def test_a_local_ray_runs_functions_at_normal_priority(tmp_path, digits, monkeypatch):
    """Ray starts its workers at nice 15; on the Ray kubeml starts, function actors run at
    nice 0 like the process backend's workers, so they keep their cores against the
    control plane and other programs. The task trains, and the Ray goes with the engine."""
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    settings = Settings(home=tmp_path / "home", backend="ray", capacity=2, round_timeout_s=60)
    engine = Engine(settings, backend=RayBackend.from_settings(settings))
    try:
        engine.create_function("mlp", function_source(SLEEP_PER_BATCH_S=0.02))
        engine.create_dataset(
            "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
        )
        task_id = engine.train(
            function="mlp", dataset="digits", epochs=2, parallelism=2, lr=0.05, static=True
        )
        pids: list[Any] = []
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = engine.backend.describe()["worker_pids"].get(task_id, [])
            time.sleep(0.05)
        assert len(pids) == 2, engine.backend.describe()
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [0, 0]
        info = engine.wait(task_id, 180)
        assert info.state is TaskState.SUCCEEDED, (info.error, info.traceback)
        history = engine.get_history(task_id)
        assert history.epochs[-1].train_loss < history.epochs[0].train_loss
        assert info.accuracy is not None and info.accuracy > 0.7
        # Both functions' rounds went over a direct socket, each epoch (a train
        # invocation's weights this small travel by value), not through Ray.
        assert engine.backend.describe()["round_sockets"] == 4
    finally:
        engine.close()
    assert not ray.is_initialized()


def test_two_tasks_the_scheduler_admits_both_fit_on_the_ray(tmp_path, digits, monkeypatch):
    """Two 1-function tasks on a 2-CPU local Ray: the scheduler admits both (one slot
    each), so each actor reserves its slot's CPU. (Sized by the control plane's cores / N,
    the first task's actor held both CPUs and the second could not be placed.)"""
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    settings = Settings(home=tmp_path / "home", backend="ray", capacity=2, round_timeout_s=60)
    engine = Engine(settings, backend=RayBackend.from_settings(settings, start_timeout_s=30))
    try:
        engine.create_function("mlp", function_source(SLEEP_PER_BATCH_S=0.01))
        engine.create_dataset(
            "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
        )
        request = dict(function="mlp", dataset="digits", epochs=2, parallelism=1, static=True)
        first = engine.train(**request, lr=0.05)
        deadline = time.monotonic() + 120
        while not engine.backend.describe()["worker_pids"].get(first):
            assert time.monotonic() < deadline, engine.backend.describe()
            time.sleep(0.05)
        second = engine.train(**request, lr=0.05, seed=1)
        infos = [engine.wait(task_id, 240) for task_id in (first, second)]
        assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 2, [i.error for i in infos]
        assert all(i.accuracy is not None and i.accuracy > 0.7 for i in infos)
        assert {w["cpus"] for w in engine.backend.describe()["workers"]} == {1.0}
    finally:
        engine.close()
    assert not ray.is_initialized()
