"""Serving from warm workers: a task's model stays loaded until it changes."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kubeml.api.schemas import TaskState
from kubeml.errors import NotFoundError
from tests.conftest import FUNCTIONS, function_source

BUILT = "main() built the model"


def _serving_source() -> str:
    """The digits MLP, saying in the task log each time main() builds its model."""
    source = function_source(SLEEP_PER_BATCH_S=0.01)
    return source.replace("def main():\n", f"def main():\n    print({BUILT!r})\n")


def _predict(model_file: Path, samples: list[Any]) -> list[int]:
    """What the model in `model_file` predicts, computed here, outside kubeml."""
    spec = importlib.util.spec_from_file_location("_digits_mlp", FUNCTIONS / "digits_mlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.MLP()
    network.load_state_dict(torch.load(model_file, weights_only=True))
    network.eval()
    with torch.no_grad():
        x = torch.tensor(np.asarray(samples, dtype=np.float32)).reshape(-1, 64) / 16.0
        return network(x).argmax(1).tolist()


def _builds(engine: Any, task_id: str) -> int:
    return sum(
        1
        for line in engine.logs_of(task_id)
        if line.source.startswith("infer/") and BUILT in line.message
    )


@pytest.mark.slow
def test_a_warm_worker_serves_the_loaded_model_until_the_model_changes(make_engine, digits):
    engine = make_engine("process")
    engine.create_function("mlp", _serving_source())
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    task_id = engine.train(
        function="mlp", dataset="digits", epochs=6, parallelism=1, lr=0.05, validate_every=0
    )
    deadline = time.monotonic() + 120
    while len(engine.get_history(task_id).epochs) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stop_task(task_id) is not None
    assert engine.wait(task_id, 60).state is TaskState.STOPPED
    model_file = engine.home / "models" / f"{task_id}.pt"
    samples = digits["test_x"][:60].tolist()

    first = [engine.infer(task_id, samples) for _ in range(4)]
    assert first == [_predict(model_file, samples)] * 4
    assert _builds(engine, task_id) == 1  # calls 2-4 found the model loaded, on one worker

    # Training more changes the model: the next call loads the new one.
    engine.resume_task(task_id)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, (info.state, info.error, info.traceback)
    assert engine.infer(task_id, samples) == _predict(model_file, samples)
    assert _builds(engine, task_id) == 2

    # A model file replaced by one that always answers 7 (as a re-created task's would be).
    state = torch.load(model_file, weights_only=True)
    state["fc2.weight"] = torch.zeros_like(state["fc2.weight"])
    state["fc2.bias"] = torch.nn.functional.one_hot(torch.tensor(7), 10).float()
    engine.models.finals.save(task_id, state)
    assert engine.infer(task_id, samples) == [7] * len(samples)
    assert _builds(engine, task_id) == 3

    # No model: a clear error, and the worker's stale copy is never used.
    engine.delete_history(task_id)
    with pytest.raises(NotFoundError, match=task_id):
        engine.infer(task_id, samples)


def _slow_infer_source() -> str:
    """The digits MLP whose infer() prints a line, and sleeps 30 s on a sample whose first
    pixel is 99 (real pixels are 0..16)."""
    source = function_source(SLEEP_PER_BATCH_S=0.0)
    return source.replace(
        "    def infer(self, data):\n",
        "    def infer(self, data):\n"
        "        print('infer got', len(data), 'samples')\n"
        "        if data[0][0] == 99:\n"
        "            import time\n"
        "            time.sleep(30)\n",
    )


@pytest.mark.slow
def test_inference_on_the_event_loop_survives_a_killed_and_a_hung_worker(make_engine, digits):
    """`Engine.infer_async` (the REST route's path) relays on the event loop: its answer
    equals the threaded path's, a worker SIGKILLed mid-call and one whose infer() hangs past
    the timeout each fail that call with a clear error, and the next call is served."""
    import asyncio
    import os
    import signal
    import threading

    from kubeml.errors import BackendError
    from kubeml.procs import pid_alive

    # 8 s: the call after a kill starts a cold worker (torch imported, the model loaded),
    # which on a loaded 2-core machine took more than 4 s.
    engine = make_engine("process", round_timeout_s=8.0)
    engine.create_function("mlp", _slow_infer_source())
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    task_id = engine.train(function="mlp", dataset="digits", epochs=1, parallelism=1, lr=0.05)
    assert engine.wait(task_id, 120).state is TaskState.SUCCEEDED
    samples = digits["test_x"][:50].tolist()
    model_file = engine.home / "models" / f"{task_id}.pt"
    expected = _predict(model_file, samples)

    assert asyncio.run(engine.infer_async(task_id, samples)) == expected
    assert engine.infer(task_id, samples) == expected
    printed = [line for line in engine.logs_of(task_id) if line.source.startswith("infer/")]
    assert any("infer got 50 samples" in line.message for line in printed), printed

    def busy_pid() -> int:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            pids = engine.backend.describe()["worker_pids"].get(task_id)
            if pids:
                return int(pids[0])
            time.sleep(0.01)
        raise AssertionError("no worker ran the inference")

    hang = [[99] * 64]
    # SIGKILLed mid-call: the call fails at once, naming the dead worker.
    killer = threading.Thread(target=lambda: os.kill(busy_pid(), signal.SIGKILL))
    killer.start()
    started = time.monotonic()
    with pytest.raises(BackendError, match="died"):
        asyncio.run(engine.infer_async(task_id, hang))
    killer.join()
    assert time.monotonic() - started < 7.5  # before the 8 s timeout
    assert asyncio.run(engine.infer_async(task_id, samples)) == expected

    # Hung past the timeout: the call fails after it, and the worker is stopped.
    pid: list[int] = []
    watcher = threading.Thread(target=lambda: pid.append(busy_pid()))
    watcher.start()
    started = time.monotonic()
    with pytest.raises(BackendError, match="ran past 8 s"):
        asyncio.run(engine.infer_async(task_id, hang))
    watcher.join()
    assert 7.9 < time.monotonic() - started < 14
    deadline = time.monotonic() + 5
    while pid_alive(pid[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid[0])
    assert asyncio.run(engine.infer_async(task_id, samples)) == expected
