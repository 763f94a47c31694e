"""A scripted backend and the job around it: the heart of kubeml, stepped without processes.

`ScriptedBackend`'s functions train the samples the job gives them, in rounds, and do at
each (epoch, func_id, round) what a script says: publish a weight, raise, hang or die.
The script runs before the function publishes its round, so a request it makes (a stop,
a resize) reaches the merge of that round.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import replace

import numpy as np
import pytest
import torch

from kubeml.api.schemas import TrainRequest
from kubeml.backends.base import FunctionBackend
from kubeml.control.job.loop import TrainJob
from kubeml.control.job.ports import JobServices
from kubeml.control.records.checkpoints import CheckpointStore
from kubeml.control.tasks.policy import StaticPolicy
from kubeml.errors import BackendError
from kubeml.runtime.invocation import FunctionCode, InvocationResult, Mode
from kubeml.runtime.sync import RoundReport
from kubeml.stores import chunks

TRAIN_SIZE = 250  # four chunks, the last one short


class ScriptedBackend(FunctionBackend):
    """Functions train the samples the job gives them, in rounds of K batches, and publish
    the weight `script(epoch, func_id, round)` returns; or raise what it returns, or
    "hang", or "die" (a lost worker, once per (epoch, func_id, round))."""

    def __init__(self, datasets, models, script, accuracy=50.0):
        super().__init__(capacity=4)
        self.datasets, self.models = datasets, models
        self.script = script
        self.accuracy = accuracy
        self.cancelled = []
        self.trained = Counter()  # (epoch, sample) -> times merged
        self.invocations = []
        self.died = set()

    def invoke(self, invocations, *, sync, log):
        futures = []
        for inv in invocations:
            self.invocations.append(inv)
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
        shard = np.concatenate([np.arange(a, b) for a, b in inv.ranges])
        samples = shard[list(inv.order)]
        per_round = inv.batch_size * (inv.k if inv.k > 0 else len(samples))
        done, round_index = 0, inv.round
        while True:
            step = self.script(inv.epoch, inv.func_id, round_index)
            key = (inv.epoch, inv.func_id, round_index)
            if step == "hang":
                return  # never publishes, never returns
            if step == "die" and key in self.died:
                step = 1.0  # the replacement trains the round
            elif step == "die":
                self.died.add(key)
                step = BackendError(f"the worker running function {inv.func_id} died")
            if isinstance(step, Exception):
                sync.fail(inv.func_id, step)
                future.set_exception(step)
                return
            take = samples[done : done + per_round]
            done += len(take)
            state = {"w": torch.full((2,), float(step)), "n": torch.tensor(round_index + 1)}
            self.models.publish(inv.task_id, inv.func_id, state)
            batches = -(-len(take) // inv.batch_size)
            final = done >= len(samples)
            report = RoundReport(
                inv.task_id, inv.func_id, round_index, len(take), 1.0 * batches, batches, final
            )
            release = sync.publish(report)
            self.trained.update((inv.epoch, int(s)) for s in take)
            round_index += 1
            if final or not release.proceed:
                break
        future.set_result(InvocationResult(inv.func_id, inv.mode, samples=done, rounds=1))

    def cancel(self, task_id):
        self.cancelled.append(task_id)


class GrantAll:
    """Slots from a scheduler with room for any N; records what the job asked."""

    def __init__(self):
        self.asked = []

    def want(self, parallelism):
        self.asked.append(("want", parallelism))
        return parallelism

    def answer(self, parallelism):
        self.asked.append(("answer", parallelism))
        return parallelism

    def busy(self):
        return 0  # no other task runs


class Recorder:
    def __init__(self):
        self.rounds, self.epochs, self.lost, self.invocations = [], [], [], [0, 0]
        self.logs = []

    def on_round(self, epoch, round_index, train_loss, parallelism, samples):
        self.rounds.append((epoch, round_index))

    def on_epoch(self, record):
        self.epochs.append(record)

    def on_invocations(self, started, failed):
        self.invocations[0] += started
        self.invocations[1] += failed

    def on_function_lost(self, replaced):
        self.lost.append(replaced)

    def on_restore(self, records):
        self.epochs = list(records)


def make_stores(tmp_path):
    from kubeml.stores.datasets import LocalDatasetStore
    from kubeml.stores.models import LocalModelStore

    datasets = LocalDatasetStore(tmp_path / "datasets")
    x = np.zeros((TRAIN_SIZE, 2), dtype=np.float32)
    y = np.zeros(TRAIN_SIZE, dtype=np.int64)
    with pytest.MonkeyPatch.context() as patch:  # stored as 64-sample chunks: the plan's smallest
        patch.setattr(chunks, "CHUNK_TARGET_BYTES", 1)
        datasets.create("d", {"train_x": x, "train_y": y, "test_x": x[:10], "test_y": y[:10]})
    assert datasets.chunk_samples("d") == 64
    models = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    return datasets, models, CheckpointStore(tmp_path / "checkpoints")


def make_job(
    stores, script, *, parallelism=2, timeout_s=30.0, accuracy=50.0, backend=None, policy=None,
    **request,
):  # fmt: skip
    datasets, models, checkpoints = stores
    backend = backend or ScriptedBackend(datasets, models, script, accuracy)
    services = JobServices(
        backend,
        datasets,
        models,
        log=lambda s, m: None,
        slots=GrantAll(),
        round_timeout_s=timeout_s,
        checkpoints=checkpoints,
        start_timeout_s=timeout_s,
    )
    request.setdefault("batch_size", 16)
    request.setdefault("outer_optimizer", "average")  # the plain mean (the outer step: test_outer)
    req = TrainRequest(function="f", dataset="d", parallelism=parallelism, **request)
    recorder = Recorder()
    services = replace(services, log=lambda source, message: recorder.logs.append(message))
    job = TrainJob(
        "task1", req, FunctionCode("f", "sha", "/nowhere"), parallelism, services, recorder,
        policy or StaticPolicy(),
    )  # fmt: skip
    return job, recorder, backend


def exactly_once(backend, epochs):
    expected = Counter({(e, s): 1 for e in range(epochs) for s in range(TRAIN_SIZE)})
    assert backend.trained == expected
