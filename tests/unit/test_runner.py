"""The runner acts on admission decisions: it starts, stops and finishes jobs in order."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kubeml.api.schemas import History, TaskInfo, TaskState, TrainRequest
from kubeml.control.job.ports import JobOutcome, Slots
from kubeml.control.job.state import Requests
from kubeml.control.records.metadata import MetadataStore
from kubeml.control.records.tasklog import TaskLogs
from kubeml.control.tasks.metrics import Metrics
from kubeml.control.tasks.registry import TaskRecorder, TaskRegistry
from kubeml.control.tasks.runner import TaskRunner
from kubeml.control.tasks.scheduler import Scheduler
from kubeml.errors import CapacityError, NotFoundError


class FakeJob:
    """Runs until its task's requests say stop; keeps the parallelism it started with, and
    its task's requests (where the scheduler's resizes arrive)."""

    def __init__(self, task_id: str, parallelism: int, slots: Slots, requests: Requests) -> None:
        self.task_id, self.parallelism, self.slots = task_id, parallelism, slots
        self.requests = requests

    def run(self) -> JobOutcome:
        deadline = time.monotonic() + 30
        while not self.requests.stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        return JobOutcome(TaskState.STOPPED)


@pytest.fixture
def runner(tmp_path: Path):
    metadata = MetadataStore(tmp_path / "kubeml.db")
    started: dict[str, FakeJob] = {}

    def make_job(recorder: TaskRecorder, parallelism: int, slots: Slots):
        if recorder.id.startswith("broken"):
            raise NotFoundError(f"dataset {recorder.info.request.dataset!r} not found")
        job = FakeJob(recorder.id, parallelism, slots, recorder.requests)
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
    assert list(started) == ["a"] and started["a"].requests.peek_resize() is None
    assert started["a"].slots.want(1) == 1
    assert list(started) == ["a", "b"]


def test_an_elastic_job_gives_a_slot_back_for_a_queued_task_and_gets_it_back(runner):
    run, started, _ = runner
    _queue(run, "a", 2, static=False)
    _queue(run, "b", 1)
    a = started["a"]
    assert list(started) == ["a"]
    assert a.requests.take_resize() == (1, "slots taken back for task b")
    assert a.slots.answer(1) == 1  # a's next round boundary: b starts
    assert list(started) == ["a", "b"]
    run.stop("b")
    assert run.tasks.wait("b", timeout_s=10)
    assert a.requests.take_resize() == (2, "slots freed (task b ended)")
    assert a.slots.answer(2) == 2 and run.scheduler.running() == {"a": 2}


def test_a_refused_task_leaves_no_trace(runner):
    run, started, metadata = runner
    with pytest.raises(CapacityError):
        _queue(run, "big", 3)
    assert metadata.list_tasks() == [] and metadata.list_histories() == []
    assert "big" not in run.tasks and started == {}


def test_a_job_that_cannot_be_built_fails_its_task_and_frees_its_slots(runner):
    """A resumed task whose dataset was deleted since: it fails saying why, its slots go
    to the next task, and nothing is left queued or running."""
    run, started, metadata = runner
    _queue(run, "a", 2)
    _queue(run, "broken", 2)  # waits for a's slots
    run.stop("a")
    assert run.tasks.wait("broken", timeout_s=10)
    info = metadata.get_task("broken")
    assert info.state is TaskState.FAILED and "cannot start" in info.error and "'d'" in info.error
    assert run.scheduler.running() == {} and "broken" not in run.tasks
    _queue(run, "c", 2)
    assert "c" in started


def test_a_shutdown_starts_no_queued_task_and_leaves_it_queued(runner):
    run, started, metadata = runner
    _queue(run, "a", 2)
    _queue(run, "b", 2)  # queued behind a
    run.close(timeout_s=5)  # a stops at its round boundary; its slots free, b must not start
    assert list(started) == ["a"]
    assert metadata.get_task("a").state is TaskState.QUEUED  # resumed at the next start
    assert metadata.get_task("b").state is TaskState.QUEUED
