"""Round points and the round plan behind `task watch` and the dashboard's R, on real epochs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState, TrainRequest
from kubeml.control.progress import MAX_POINTS, ProgressBook, round_plan
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
