"""The runner acts on admission decisions: it starts, stops and finishes jobs in order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kubeml.api.schemas import History, TaskInfo, TaskState, TrainRequest
from kubeml.control.job import JobOutcome
from kubeml.control.metadata import MetadataStore
from kubeml.control.metrics import Metrics
from kubeml.control.runner import TaskRunner
from kubeml.control.scheduler import Scheduler
from kubeml.control.tasklog import TaskLogs
from kubeml.control.tasks import TaskRecorder, TaskRegistry
from kubeml.errors import CapacityError


class FakeJob:
    """Runs until stopped; records the parallelism it started with and what resize gave."""

    def __init__(self, task_id: str, parallelism: int, resize: Callable[[int], int]) -> None:
        self.task_id, self.parallelism, self.resize = task_id, parallelism, resize
        self._stop = threading.Event()

    def run(self) -> JobOutcome:
        self._stop.wait(30)
        return JobOutcome(TaskState.STOPPED)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def runner(tmp_path: Path):
    metadata = MetadataStore(tmp_path / "kubeml.db")
    started: dict[str, FakeJob] = {}

    def make_job(recorder: TaskRecorder, parallelism: int, resize: Callable[[int], int]):
        job = FakeJob(recorder.id, parallelism, resize)
        started[recorder.id] = job
        return job

    metrics = Metrics()
    tasks = TaskRegistry(metadata, metrics)
    run = TaskRunner(tasks, Scheduler(2), metadata, TaskLogs(tmp_path / "logs"), metrics, make_job)
    yield run, started, metadata
    run.close(timeout_s=5)
    metadata.close()


def _queue(runner: TaskRunner, task_id: str, parallelism: int) -> None:
    request = TrainRequest(function="f", dataset="d", parallelism=parallelism)
    info = TaskInfo(
        id=task_id,
        request=request,
        state=TaskState.QUEUED,
        parallelism=parallelism,
        created_at=datetime.now(timezone.utc),
    )
    runner.enqueue(info, History(task_id=task_id, request=request, state=TaskState.QUEUED))


def test_a_queued_task_starts_when_the_one_before_it_ends(runner):
    run, started, metadata = runner
    _queue(run, "a", 2)
    _queue(run, "b", 1)
    assert list(started) == ["a"] and metadata.get_task("a").state is TaskState.RUNNING
    assert metadata.get_task("b").state is TaskState.QUEUED
    run.stop("a")
    assert run.tasks.wait("a", timeout_s=10)
    assert metadata.get_task("a").state is TaskState.STOPPED
    assert list(started) == ["a", "b"] and started["b"].parallelism == 1


def test_stopping_a_queued_task_ends_it_at_once_and_it_never_starts(runner):
    run, started, metadata = runner
    _queue(run, "a", 2)
    _queue(run, "b", 2)
    run.stop("b")
    assert metadata.get_task("b").state is TaskState.STOPPED and "b" not in run.tasks
    run.stop("a")
    assert run.tasks.wait("a", timeout_s=10)
    assert list(started) == ["a"] and run.scheduler.running() == {}


def test_a_job_grows_only_into_free_slots_and_shrinking_admits_the_queue(runner):
    run, started, _ = runner
    _queue(run, "a", 1)
    assert started["a"].resize(2) == 2
    _queue(run, "b", 1)  # waits: a holds both slots
    assert list(started) == ["a"]
    assert started["a"].resize(1) == 1
    assert list(started) == ["a", "b"]


def test_a_refused_task_leaves_no_trace(runner):
    run, started, metadata = runner
    with pytest.raises(CapacityError):
        _queue(run, "big", 3)
    assert metadata.list_tasks() == [] and metadata.list_histories() == []
    assert "big" not in run.tasks and started == {}
