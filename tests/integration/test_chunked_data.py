"""Training over chunked datasets on real workers: every sample once per epoch while N
changes mid-epoch, and each function holding a bounded piece of its lane, not the lane."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from kubeml.runtime.feed import PIECE_CHUNKS
from kubeml.stores import chunks
from tests.conftest import function_source

pytestmark = pytest.mark.slow


def _wait(engine: Any, task_id: str, epoch: int, round_index: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        info = engine.get_task(task_id)
        if info.epoch > epoch or (info.epoch == epoch and info.round >= round_index):
            return
        assert info.state in (TaskState.QUEUED, TaskState.RUNNING), info.error
        assert time.monotonic() < deadline, f"never reached epoch {epoch}, round {round_index}"
        time.sleep(0.01)


def _recorded(folder: Path) -> list[tuple[int, int, int]]:
    lines = [line.split() for f in folder.glob("*.txt") for line in f.read_text().splitlines()]
    return [(int(e), int(i), int(held)) for e, i, held in lines]


def test_every_sample_trains_once_per_epoch_while_n_changes_over_many_chunks(
    make_engine: Any, digits: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks, "CHUNK_TARGET_BYTES", 1)  # 64-sample chunks: 24 of them
    engine = make_engine("process", capacity=3)
    n = len(digits["train_y"])
    ids = np.arange(n) * 10 + digits["train_y"]  # the function reads the sample's id back
    engine.create_dataset("digits", digits["train_x"], ids, digits["test_x"], digits["test_y"])
    assert engine.datasets.chunk_samples("digits") == 64
    record = tmp_path / "record"
    record.mkdir()
    engine.create_function(
        "mlp", function_source(RECORD_SAMPLES_TO=str(record), SLEEP_PER_BATCH_S=0.005)
    )
    task_id = engine.train(
        function="mlp", dataset="digits", epochs=3, batch_size=16, k=4, lr=0.05,
        parallelism=1, static=True, seed=5,
    )  # fmt: skip
    _wait(engine, task_id, 1, 3)  # epochs count from 1
    engine.scheduler.resize(task_id, 3)  # the slots, then the job's request for them
    engine.tasks.request_parallelism(task_id, 3, "test: up mid-epoch")
    _wait(engine, task_id, 2, 4)
    engine.tasks.request_parallelism(task_id, 2, "test: down mid-epoch")
    info = engine.wait(task_id, 240)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    epochs = engine.get_history(task_id).epochs
    assert [e.ns() for e in epochs] == [[1, 3], [3, 2], [2]]  # re-split mid-epoch, twice

    trained = _recorded(record)
    per_epoch = Counter((epoch, sample) for epoch, sample, _ in trained)
    assert per_epoch == Counter({(e, s): 1 for e in (1, 2, 3) for s in range(n)})
    # N=1 trains the whole split as one lane, yet a function never held more than a piece.
    assert max(held for _, _, held in trained) <= PIECE_CHUNKS * 64 < n
    assert [e.samples for e in epochs] == [n] * 3
    assert epochs[-1].train_loss < epochs[0].train_loss  # it learns
    assert info.accuracy is not None and info.accuracy > 80
