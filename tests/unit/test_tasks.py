"""The live-task registry: one lock, consistent reads while jobs record and finish."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kubeml.api.schemas import EpochRecord, History, TaskInfo, TaskState, TrainRequest
from kubeml.control.records.metadata import MetadataStore
from kubeml.control.tasks.metrics import Metrics
from kubeml.control.tasks.registry import TaskRegistry


def _task(task_id: str) -> tuple[TaskInfo, History]:
    request = TrainRequest(function="f", dataset="d", epochs=50)
    info = TaskInfo(
        id=task_id,
        request=request,
        state=TaskState.RUNNING,
        parallelism=1,
        created_at=datetime.now(timezone.utc),
    )
    return info, History(task_id=task_id, request=request, state=TaskState.RUNNING)


def _epoch(n: int) -> EpochRecord:
    return EpochRecord(
        epoch=n,
        rounds=1,
        train_loss=1.0 / n,
        parallelism=1,
        epoch_duration_s=0.1,
        samples_per_s=10.0,
    )


@pytest.fixture
def registry(tmp_path: Path):
    metadata = MetadataStore(tmp_path / "kubeml.db")
    yield TaskRegistry(metadata, Metrics()), metadata
    metadata.close()


def test_epochs_are_persisted_and_reads_are_copies(registry):
    tasks, metadata = registry
    recorder = tasks.add(*_task("t1"))
    recorder.on_epoch(_epoch(1))
    copy = recorder.history()
    copy.epochs.clear()
    assert [e.epoch for e in recorder.history().epochs] == [1]
    assert [e.epoch for e in metadata.get_history("t1").epochs] == [1]
    assert metadata.get_task("t1").epoch == 1 and recorder.info.train_loss == 1.0


def test_readers_see_whole_epochs_while_a_task_records_and_finishes(registry):
    tasks, _ = registry
    recorder = tasks.add(*_task("t1"))
    seen: list[tuple[int, int]] = []
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            live = tasks.get("t1")
            if live is None:
                if "t1" in tasks or tasks.live():
                    problems.append("gone from get() but still listed")
                continue
            history, info = live.history(), live.info
            seen.append((len(history.epochs), info.epoch))
            if history.epochs and history.epochs[-1].epoch > info.epoch:
                problems.append(f"history at {history.epochs[-1].epoch}, info at {info.epoch}")

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for n in range(1, 51):
        recorder.on_epoch(_epoch(n))
    recorder.update(state=TaskState.SUCCEEDED)
    tasks.remove("t1")
    assert tasks.wait("t1", timeout_s=1)
    done.set()
    for reader in readers:
        reader.join(timeout=10)
    assert not problems, problems[:3]
    assert seen and max(n for n, _ in seen) <= 50
    assert tasks.get("t1") is None and tasks.live() == []


def test_wait_returns_when_the_task_is_removed_and_times_out_otherwise(registry):
    tasks, _ = registry
    tasks.add(*_task("t1"))
    assert tasks.wait("t1", timeout_s=0.05) is False
    threading.Timer(0.05, tasks.remove, args=("t1",)).start()
    assert tasks.wait("t1", timeout_s=10) is True
    assert tasks.wait("never-added", timeout_s=0) is True


def test_finishing_sets_the_history_state_too(registry):
    tasks, metadata = registry
    recorder = tasks.add(*_task("t1"))
    recorder.update(state=TaskState.STOPPED, error="stopped by the user")
    recorder.persist()
    assert metadata.get_history("t1").state is TaskState.STOPPED
    assert metadata.get_task("t1").error == "stopped by the user"


def test_requests_before_the_job_exists_wait_in_the_task(registry):
    """A stop or the scheduler's resize for an admitted task whose job is not built yet
    waits in the task's `requests`, which its job is built with."""
    tasks, _ = registry
    recorder = tasks.add(*_task("t1"))
    tasks.request_parallelism("t1", 3, "room freed")
    recorder.requests.stop()
    assert recorder.requests.stopping
    assert recorder.requests.take_resize() == (3, "room freed")
    assert recorder.requests.take_resize() is None  # taken once
    tasks.request_parallelism("unknown", 2, "x")  # not live: nothing to remember
    assert tasks.get("unknown") is None
