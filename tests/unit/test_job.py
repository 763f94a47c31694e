"""The train job's protocol, driven by a fake backend whose functions follow a script."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from kubeml.api.schemas import TaskState, TrainRequest
from kubeml.backends.base import FunctionBackend
from kubeml.control.job import JobServices, TrainJob
from kubeml.control.policy import StaticPolicy
from kubeml.errors import FunctionError
from kubeml.runtime.invocation import FunctionCode, InvocationResult, Mode
from kubeml.runtime.sync import RoundReport
from kubeml.stores.datasets import LocalDatasetStore
from kubeml.stores.models import LocalModelStore


class ScriptedBackend(FunctionBackend):
    """Functions publish the weights their script gives: a list of (value, samples) per
    round, or an exception to raise instead, or "hang"."""

    def __init__(self, datasets, models, script, accuracy=50.0):
        super().__init__(capacity=4)
        self.datasets, self.models = datasets, models
        self.script = script
        self.accuracy = accuracy
        self.cancelled = []

    def invoke(self, invocations, *, sync, log):
        futures = []
        for inv in invocations:
            future: Future = Future()
            futures.append(future)
            threading.Thread(target=self._run, args=(inv, sync, future), daemon=True).start()
        return futures

    def _run(self, inv, sync, future):
        if inv.mode is Mode.INIT:
            self.models.write_reference(inv.task_id, {"w": torch.zeros(2), "n": torch.tensor(0)})
            future.set_result(InvocationResult(inv.func_id, inv.mode))
            return
        if inv.mode is Mode.VALIDATE:
            future.set_result(
                InvocationResult(inv.func_id, inv.mode, samples=5, loss=0.5, accuracy=self.accuracy)
            )
            return
        steps = self.script(inv.epoch, inv.func_id)
        for round_index, step in enumerate(steps):
            if step == "hang":
                return  # never publishes, never returns
            if isinstance(step, Exception):
                sync.fail(inv.func_id, step)
                future.set_exception(step)
                return
            value, samples = step
            state = {"w": torch.full((2,), float(value)), "n": torch.tensor(round_index + 1)}
            self.models.publish(inv.task_id, inv.func_id, state)
            final = round_index == len(steps) - 1
            report = RoundReport(inv.task_id, inv.func_id, round_index, samples, 1.0, 1, final)
            if not sync.publish(report).proceed:
                break
        future.set_result(InvocationResult(inv.func_id, inv.mode, samples=10, loss=1.0, rounds=1))

    def cancel(self, task_id):
        self.cancelled.append(task_id)


class Recorder:
    def __init__(self):
        self.rounds, self.epochs, self.invocations = [], [], []

    def on_round(self, epoch, round_index, train_loss, parallelism):
        self.rounds.append((epoch, round_index))

    def on_epoch(self, record):
        self.epochs.append(record)

    def on_invocations(self, started, failed):
        self.invocations.append((started, failed))


@pytest.fixture
def stores(tmp_path):
    datasets = LocalDatasetStore(tmp_path / "datasets")
    x = np.zeros((256, 2), dtype=np.float32)
    y = np.zeros(256, dtype=np.int64)
    datasets.create("d", {"train_x": x, "train_y": y, "test_x": x[:10], "test_y": y[:10]})
    return datasets, LocalModelStore(tmp_path / "shm", tmp_path / "models")


def _job(stores, script, *, parallelism=2, timeout_s=30.0, accuracy=50.0, **request):
    datasets, models = stores
    backend = ScriptedBackend(datasets, models, script, accuracy)
    services = JobServices(
        backend,
        datasets,
        models,
        log=lambda s, m: None,
        resize=lambda n: n,
        round_timeout_s=timeout_s,
    )
    req = TrainRequest(function="f", dataset="d", parallelism=parallelism, **request)
    recorder = Recorder()
    job = TrainJob(
        "task1",
        req,
        FunctionCode("f", "sha", "/nowhere"),
        parallelism,
        services,
        recorder,
        StaticPolicy(),
    )
    return job, recorder, backend


def test_rounds_merge_by_samples_and_the_final_model_persists(stores):
    job, recorder, _ = _job(
        stores,
        lambda epoch, f: [(1.0, 10), (4.0, 30)] if f == 0 else [(3.0, 10), (8.0, 10)],
        k=1,
        outer_optimizer="average",  # the plain sample-weighted mean (the outer step: test_outer)
    )
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert recorder.rounds == [(1, 1), (1, 2)]
    final = stores[1].load_final("task1")
    assert torch.allclose(final["w"], torch.full((2,), 0.75 * 4.0 + 0.25 * 8.0))
    assert final["n"].item() == 2 and final["n"].dtype == torch.int64
    assert recorder.epochs[0].accuracy == 50.0  # validated at the end
    assert recorder.invocations == [(1, 0), (2, 0), (2, 0)]  # init, train, validate


def test_a_failed_function_is_never_averaged_and_fails_the_task(stores):
    error = FunctionError("user code raised", details="Traceback: ValueError in train")
    job, recorder, _ = _job(
        stores, lambda e, f: [(1.0, 10), (2.0, 10)] if f == 0 else [(5.0, 10), error]
    )
    outcome = job.run()
    assert outcome.state is TaskState.FAILED
    assert outcome.error == "user code raised"
    assert "ValueError in train" in outcome.traceback
    assert recorder.rounds == [(1, 1)]  # round 2 was never merged
    assert recorder.invocations == [(1, 0), (2, 1)]  # the failure is counted
    assert not stores[1].has_final("task1")


def test_stop_is_honoured_at_the_next_round_boundary(stores):
    job, recorder, _ = _job(stores, lambda e, f: [(1.0, 10)] * 5, epochs=3, k=1)
    original = job._merge

    def merge_then_stop(round_index, reports):
        job.stop()  # a `task stop` arriving during round 1
        return original(round_index, reports)

    job._merge = merge_then_stop
    outcome = job.run()
    assert outcome.state is TaskState.STOPPED
    assert recorder.rounds == [(1, 1)]
    assert stores[1].has_final("task1")  # the merged model of the stop is kept


def test_goal_accuracy_ends_the_task_early(stores):
    job, recorder, _ = _job(
        stores,
        lambda e, f: [(1.0, 10)],
        epochs=5,
        validate_every=1,
        goal_accuracy=85,
        accuracy=90.0,
    )
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED
    assert len(recorder.epochs) == 1


def test_a_hung_function_fails_the_task_after_the_round_timeout(stores):
    job, _, backend = _job(stores, lambda e, f: [(1.0, 10)] if f == 0 else ["hang"], timeout_s=0.5)
    outcome = job.run()
    assert outcome.state is TaskState.FAILED
    assert "function(s) [1] made no progress" in outcome.error
    assert backend.cancelled == ["task1"]
