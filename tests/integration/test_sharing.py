"""Tasks share the function slots at round boundaries, on real workers: a queued task
takes a slot back from a running elastic one mid-epoch and gives it back when it ends."""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import function_source

pytestmark = pytest.mark.slow


def _watch_capacity(engine: Any, stop: threading.Event, seen: list[tuple[int, int]]) -> None:
    """Sample (busy workers, slots held) until `stop`: neither may pass the capacity."""
    while not stop.is_set():
        busy = engine.backend.describe()["busy_workers"]
        seen.append((busy, sum(engine.scheduler.running().values())))
        time.sleep(0.01)


def test_a_queued_task_takes_a_slot_back_mid_epoch_and_the_runner_gets_it_back(
    make_engine: Any, digits: dict[str, np.ndarray]
) -> None:
    engine = make_engine("process", capacity=2)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    train_size = len(digits["train_x"])
    # ~0.1 s a round: a runs 24 rounds an epoch at N=2, twice as many at N=1
    engine.create_function("slow", function_source(SLEEP_PER_BATCH_S=0.05))
    engine.create_function("mlp", function_source())
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=_watch_capacity, args=(engine, stop, seen), daemon=True)
    sampler.start()
    try:
        a = engine.train(
            function="slow", dataset="digits", epochs=2, parallelism=2, k=2, batch_size=16,
            lr=0.05, seed=1, outer_optimizer="average",  # Nesterov overshoots at K=2 here
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while engine.get_task(a).round < 3:
            assert time.monotonic() < deadline, "task a never reached round 3"
            time.sleep(0.02)
        b = engine.train(function="mlp", dataset="digits", epochs=2, parallelism=1, lr=0.05)
        info_b = engine.wait(b, 120)
        info_a = engine.wait(a, 120)
    finally:
        stop.set()
        sampler.join()
    assert info_a.state is TaskState.SUCCEEDED, info_a.traceback
    assert info_b.state is TaskState.SUCCEEDED, info_b.traceback
    assert seen and max(busy for busy, _ in seen) <= 2 and max(held for _, held in seen) <= 2

    history_a, history_b = engine.get_history(a), engine.get_history(b)
    logs = engine.logs_of(a)
    messages = [line.message for line in logs]
    shrink = [m for m in messages if m.startswith("N 2 -> 1 at round")]
    at_two = f"{0.05 * math.sqrt(2):g}"  # each function's lr: lr x sqrt(N), the default
    taken = f"of epoch 1: slots taken back for task {b}, lr {at_two} -> 0.05"
    assert shrink and shrink[0].endswith(taken), messages
    grow = [m for m in messages if m.startswith("N 1 -> 2 at round")]
    freed = f": slots freed (task {b} ended), lr 0.05 -> {at_two}"
    assert grow and grow[0].endswith(freed), messages
    # b started while a's first epoch still ran, and a went back to 2 within an epoch
    first_epoch_end = next(line.time for line in logs if line.message.startswith("epoch 1:"))
    assert info_b.started_at is not None and info_b.started_at < first_epoch_end
    paths = [e.parallelism_path for e in history_a.epochs]
    assert paths[0] is not None and paths[0][:2] == [2, 1], paths
    assert any(p is not None and p[-2:] == [1, 2] for p in paths), paths
    # no lost work: every epoch of both trained each sample once, and both learned
    for history in (history_a, history_b):
        assert [e.samples for e in history.epochs] == [train_size, train_size]
        assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    points = engine.progress.rounds(a)  # what `task watch` and the dashboard draw
    assert [sum(p.samples for p in points if p.epoch == e) for e in (1, 2)] == [train_size] * 2
    for record in history_a.epochs:
        ns = [p.parallelism for p in points if p.epoch == record.epoch]
        stretches = [n for i, n in enumerate(ns) if i == 0 or ns[i - 1] != n]
        assert stretches == (record.parallelism_path or [record.parallelism])
    assert info_a.accuracy is not None and info_a.accuracy > 90


def test_functions_share_the_cores_with_the_other_running_tasks(
    make_engine: Any, digits: dict[str, np.ndarray]
) -> None:
    """A lone 1-function task trains on every core; while a second task runs, each gets
    its share (two 2-thread pools on 2 cores trained ~6x slower than two 1-thread ones),
    and the first gets every core back within a round of the second ending."""
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: nothing to share")
    engine = make_engine("process", capacity=2)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    engine.create_function("slow", function_source(SLEEP_PER_BATCH_S=0.02, PRINT_THREADS=True))
    task: dict[str, Any] = dict(
        function="slow", dataset="digits", parallelism=1, static=True, k=2, lr=0.05
    )
    a = engine.train(**task, epochs=8)  # long enough for b to start on a loaded machine
    deadline = time.monotonic() + 60
    while engine.get_task(a).round < 3:
        assert time.monotonic() < deadline, "task a never reached round 3"
        time.sleep(0.02)
    b = engine.train(**task, epochs=1, seed=1)
    infos = [engine.wait(b, 120), engine.wait(a, 120)]
    assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 2, [i.traceback for i in infos]

    def stretches(task_id: str) -> list[int]:
        counts = [
            int(line.message.split()[-1])
            for line in engine.logs_of(task_id)
            if line.message.startswith("threads now ")
        ]
        return [n for i, n in enumerate(counts) if i == 0 or counts[i - 1] != n]

    assert stretches(b) == [cores // 2]
    assert stretches(a) == [cores, cores // 2, cores]
    assert any("torch threads per function" in line.message for line in engine.logs_of(a))
