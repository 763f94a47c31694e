"""The runner acts on admission decisions: it starts, stops and finishes jobs in order."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kubeml.api.schemas import History, TaskInfo, TaskState, TrainRequest
from kubeml.control.job import JobOutcome, Slots
from kubeml.control.metadata import MetadataStore
from kubeml.control.metrics import Metrics
from kubeml.control.runner import TaskRunner
from kubeml.control.scheduler import Scheduler
from kubeml.control.tasklog import TaskLogs
from kubeml.control.tasks import TaskRecorder, TaskRegistry
from kubeml.errors import CapacityError


class FakeJob:
    """Runs until stopped; records the parallelism it started with and the resizes the
    scheduler asked of it."""

    def __init__(self, task_id: str, parallelism: int, slots: Slots) -> None:
        self.task_id, self.parallelism, self.slots = task_id, parallelism, slots
        self.requests: list[tuple[int, str]] = []
        self._stop = threading.Event()

    def request_parallelism(self, parallelism: int, reason: str = "") -> None:
        self.requests.append((parallelism, reason))

    def run(self) -> JobOutcome:
        self._stop.wait(30)
        return JobOutcome(TaskState.STOPPED)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def runner(tmp_path: Path):
    metadata = MetadataStore(tmp_path / "kubeml.db")
    started: dict[str, FakeJob] = {}

    def make_job(recorder: TaskRecorder, parallelism: int, slots: Slots):
        job = FakeJob(recorder.id, parallelism, slots)
        started[recorder.id] = job
        return job

    metrics = Metrics()
    tasks = TaskRegistry(metadata, metrics)
    run = TaskRunner(tasks, Scheduler(2), metadata, TaskLogs(tmp_path / "logs"), metrics, make_job)
    yield run, started, metadata
    run.close(timeout_s=5)
    metadata.close()


def _queue(runner: TaskRunner, task_id: str, parallelism: int, static: bool = True) -> None:
    request = TrainRequest(function="f", dataset="d", parallelism=parallelism, static=static)
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
    assert started["a"].slots.want(2) == 2
    _queue(run, "b", 1)  # waits: a holds both slots, and static a is never asked to shrink
    assert list(started) == ["a"] and started["a"].requests == []
    assert started["a"].slots.want(1) == 1
    assert list(started) == ["a", "b"]


def test_an_elastic_job_gives_a_slot_back_for_a_queued_task_and_gets_it_back(runner):
    run, started, _ = runner
    _queue(run, "a", 2, static=False)
    _queue(run, "b", 1)
    a = started["a"]
    assert list(started) == ["a"] and a.requests == [(1, "slots taken back for task b")]
    assert a.slots.settle(1) == 1  # a's next round boundary: b starts
    assert list(started) == ["a", "b"]
    run.stop("b")
    assert run.tasks.wait("b", timeout_s=10)
    assert a.requests[-1] == (2, "slots freed (task b ended)")
    assert a.slots.settle(2) == 2 and run.scheduler.running() == {"a": 2}


def test_a_refused_task_leaves_no_trace(runner):
    run, started, metadata = runner
    with pytest.raises(CapacityError):
        _queue(run, "big", 3)
    assert metadata.list_tasks() == [] and metadata.list_histories() == []
    assert "big" not in run.tasks and started == {}
