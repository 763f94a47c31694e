"""Round points and the round plan behind `task watch` and the dashboard's R, on real epochs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState, TrainRequest
from kubeml.control.tasks.progress import MAX_POINTS, ProgressBook, round_plan
from tests.conftest import function_source


@pytest.mark.parametrize(("k", "batch", "n"), [(4, 64, 2), (-1, 64, 3), (3, 100, 1), (1, 128, 4)])
def test_round_plan_matches_the_rounds_a_real_epoch_merges(
    make_engine: Any, digits: dict[str, np.ndarray], k: int, batch: int, n: int
) -> None:
    digits_engine = make_engine("inline", capacity=4)
    digits_engine.create_function("mlp", function_source())
    digits_engine.create_dataset("digits", digits["train_x"], digits["train_y"],
                                 digits["test_x"], digits["test_y"])  # fmt: skip
    request = TrainRequest(function="mlp", dataset="digits", epochs=2, k=k, batch_size=batch,
                           parallelism=n, static=True, seed=3)  # fmt: skip
    task_id = digits_engine.train(request)
    assert digits_engine.wait(task_id, timeout_s=120).state is TaskState.SUCCEEDED
    size = digits_engine.get_dataset("digits").train_size
    for record in digits_engine.get_history(task_id).epochs:
        plan = round_plan(size, n, request, record.epoch)
        assert len(plan) == record.rounds
        assert sum(plan) == size  # every sample is trained once per epoch
    points = digits_engine.progress.rounds(task_id)
    assert [(p.epoch, p.round) for p in points] == [
        (e.epoch, r + 1) for e in digits_engine.get_history(task_id).epochs for r in range(e.rounds)
    ]
    assert all(p.index == i for i, p in enumerate(points))
    later = [p for p in points if p.round > 1]  # none for K=-1: one round per epoch
    assert all(p.samples_per_s and p.samples_per_s > 0 for p in later)
    assert all(p.samples_per_s is None for p in points if p.round == 1)


def test_points_are_bounded_and_indexes_stay_stable() -> None:
    book = ProgressBook(lambda name: 640)
    for i in range(MAX_POINTS + 10):
        book.on_round("t", 1, i % 10 + 1, 1.0, 1, 64)
    kept = book.rounds("t")
    assert len(kept) == MAX_POINTS and kept[0].index == 10
    assert [p.index for p in book.rounds("t", since=MAX_POINTS + 8)] == [
        MAX_POINTS + 8,
        MAX_POINTS + 9,
    ]
    assert book.rounds("unknown") == []


def test_the_plan_follows_an_n_changed_mid_epoch(make_engine: Any, digits: dict[str, Any]) -> None:
    """A second task takes a slot from a running one mid-epoch; the round plan (the
    dashboard's and `task watch`'s R) is then the rounds merged so far plus the re-split
    rest: the epoch's real rounds, not the plan of the new N from the start."""
    engine = make_engine("inline", capacity=2)
    engine.create_function("mlp", function_source(SLEEP_PER_BATCH_S=0.01))
    engine.create_dataset("digits", digits["train_x"], digits["train_y"],
                          digits["test_x"], digits["test_y"])  # fmt: skip
    request = TrainRequest(function="mlp", dataset="digits", epochs=1, k=2, batch_size=32,
                           parallelism=2, seed=1, validate_every=0)  # fmt: skip
    task_id = engine.train(request)
    size = engine.get_dataset("digits").train_size

    def points() -> list[Any]:
        return engine.progress.rounds(task_id)

    deadline = time.monotonic() + 60
    while len(points()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    other = engine.train(request.model_copy(update={"parallelism": 1, "epochs": 3, "static": True}))
    while not any(p.parallelism == 1 for p in points()) and time.monotonic() < deadline:
        time.sleep(0.01)
    plan = engine.progress.plan(task_id, request, 1, 1)
    assert engine.wait(task_id, timeout_s=120).state is TaskState.SUCCEEDED
    assert engine.get_task(other).state is TaskState.RUNNING  # it held the slot throughout
    record = engine.get_history(task_id).epochs[0]
    assert record.parallelism_path, record  # N did change within the epoch
    assert plan == [p.samples for p in points()]
    assert len(plan) == record.rounds and sum(plan) == size
    assert len(round_plan(size, 1, request, 1)) != record.rounds  # what R said before
    engine.stop_task(other)
