"""Records are checked by their model before SQLite stores them, and read back defensively."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kubeml.api.schemas import EpochRecord, History, TaskInfo, TaskState, TrainRequest
from kubeml.control.records.metadata import MetadataStore
from kubeml.errors import NotFoundError, StorageError


def _task(task_id: str = "t1") -> TaskInfo:
    request = TrainRequest(function="f", dataset="d")
    now = datetime.now(timezone.utc)
    return TaskInfo(id=task_id, request=request, state=TaskState.QUEUED, parallelism=2,
                    created_at=now)  # fmt: skip


def test_a_record_that_would_not_read_back_is_never_written(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "kubeml.db")
    task = _task()
    bad = task.model_copy(update={"request": task.request.model_copy(update={"lr": math.inf})})
    with pytest.raises(StorageError, match=r"refusing to store task 't1'.*lr"):
        store.put_task(bad)
    with pytest.raises(NotFoundError):
        store.get_task("t1")
    store.put_task(task)
    assert store.get_task("t1") == task


def test_nan_measurements_round_trip(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "kubeml.db")
    record = EpochRecord(epoch=1, train_loss=math.nan, val_loss=math.inf, accuracy=None,
                         parallelism=2, epoch_duration_s=1.0, samples_per_s=10.0,
                         rounds=1)  # fmt: skip
    history = History(task_id="t1", request=_task().request, state=TaskState.FAILED,
                      epochs=[record])  # fmt: skip
    store.put_history(history)
    again = MetadataStore(tmp_path / "kubeml.db").get_history("t1").epochs[0]
    assert math.isnan(again.train_loss) and again.val_loss == math.inf


def test_damaged_rows_are_skipped_reported_and_forgotten_once_deleted(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "kubeml.db")
    store.put_task(_task("good"))
    store.put_task(_task("bad"))
    store.close()
    with sqlite3.connect(tmp_path / "kubeml.db") as db:
        db.execute("UPDATE tasks SET body='{\"id\": \"bad\"}' WHERE id='bad'")
        db.execute("INSERT INTO functions VALUES ('f', 'abc', 'not a date', 'nor this')")
    store = MetadataStore(tmp_path / "kubeml.db")  # starts, and says what it skipped
    assert [t.id for t in store.list_tasks()] == ["good"]
    assert store.list_functions() == []
    damaged = store.damaged()
    assert len(damaged) == 2 and damaged[0].startswith("function 'f': created_at")
    assert damaged[1].startswith("task 'bad': request: Field required")
    with pytest.raises(StorageError, match="task 'bad' is damaged"):
        store.get_task("bad")
    assert store.damaged_ids("task") == ["bad"]
    store.delete_task("bad")
    store.delete_function("f")
    assert store.damaged() == []
