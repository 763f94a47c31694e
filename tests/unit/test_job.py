"""The train job's protocol, driven by a fake backend whose functions follow a script."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import replace

import pytest
import torch

from kubeml.api.schemas import TaskState
from kubeml.control.plan.chunks import epoch_orders
from kubeml.control.tasks.policy import StaticPolicy
from kubeml.control.tasks.scheduler import Resize, Scheduler
from kubeml.errors import BackendError, FunctionError
from kubeml.runtime.invocation import Mode
from tests.unit.scripted import (
    TRAIN_SIZE,
    ScriptedBackend,
    exactly_once,
    make_job,
    make_stores,
)


@pytest.fixture
def stores(tmp_path):
    return make_stores(tmp_path)


def test_rounds_merge_by_samples_and_the_final_model_persists(stores):
    job, recorder, backend = make_job(stores, lambda e, f, r: [1.0, 4.0][f], k=1, batch_size=128)
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert recorder.rounds == [(1, 1)]
    sizes = [len(o) for o in epoch_orders(TRAIN_SIZE, 2, seed=0, epoch=0)]
    assert sorted(sizes) == [125, 125]  # even stretches of the epoch's order
    final = stores[1].load_final("task1")
    expected = (sizes[0] * 1.0 + sizes[1] * 4.0) / TRAIN_SIZE
    assert torch.allclose(final["w"], torch.full((2,), expected))
    assert final["n"].item() == 1 and final["n"].dtype == torch.int64
    assert recorder.epochs[0].accuracy == 50.0  # validated at the end
    assert recorder.invocations == [5, 0]  # init 1, train 2, validate 2
    exactly_once(backend, 1)


def test_init_runs_with_a_training_functions_share_of_the_cores(monkeypatch, stores):
    """A backend that sizes workers by threads (Ray) then reuses the init worker."""
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    job, _, backend = make_job(stores, lambda e, f, r: 1.0, parallelism=4)
    assert job.run().state is TaskState.SUCCEEDED
    by_mode = {inv.mode: inv.threads for inv in backend.invocations}
    assert by_mode[Mode.INIT] == by_mode[Mode.TRAIN] == 2  # 8 cores over N=4


class Grow(StaticPolicy):
    """Asks for one function more after every epoch, up to the cap the job gives."""

    def next_parallelism(self, record, capacity):
        return min(capacity, record.parallelism + 1)


class ClusterBackend(ScriptedBackend):
    """Functions on a cluster of 8 cores, whatever the control plane's machine has."""

    def cores(self):
        return 8


@pytest.mark.parametrize(("backend_class", "path"), [(ScriptedBackend, [1, 2, 2, 2]),
                                                     (ClusterBackend, [1, 2, 3, 4])])  # fmt: skip
def test_the_policy_grows_n_up_to_the_cores_the_functions_run_on(
    monkeypatch, stores, backend_class, path
):
    """A local backend's N stops at this machine's 2 cores; a cluster's goes on to the
    backend's capacity (4), beyond the control plane's machine."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    datasets, models, _ = stores
    backend = backend_class(datasets, models, lambda e, f, r: 1.0)
    job, recorder, _ = make_job(
        stores, None, parallelism=1, epochs=4, backend=backend, policy=Grow()
    )
    assert job.run().state is TaskState.SUCCEEDED
    assert [e.parallelism for e in recorder.epochs] == path
    exactly_once(backend, 4)


def test_every_sample_is_trained_once_per_epoch_in_k_rounds(stores):
    job, recorder, backend = make_job(stores, lambda e, f, r: 1.0, k=2, epochs=2)
    assert job.run().state is TaskState.SUCCEEDED
    assert [e.rounds for e in recorder.epochs] == [4, 4]  # 125 samples = 8 batches = 4 rounds
    exactly_once(backend, 2)
    assert not stores[2].load("task1")  # a finished task keeps no checkpoint


def test_a_failed_function_is_never_averaged_and_fails_the_task(stores):
    error = FunctionError("user code raised", details="Traceback: ValueError in train")
    job, recorder, _ = make_job(stores, lambda e, f, r: error if (f, r) == (1, 1) else 1.0, k=2)
    outcome = job.run()
    assert outcome.state is TaskState.FAILED
    assert outcome.error == "user code raised"
    assert "ValueError in train" in outcome.traceback
    assert recorder.rounds == [(1, 1)]  # round 2 was never merged
    assert recorder.lost == []  # user errors are never retried
    assert recorder.invocations == [3, 1]  # the failure is counted
    assert not stores[1].has_final("task1")


def test_a_lost_worker_replays_its_round_and_nothing_is_trained_twice(stores):
    job, recorder, backend = make_job(
        stores, lambda e, f, r: "die" if (e, f, r) == (0, 1, 2) else 1.0, k=1, epochs=2
    )
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert recorder.lost == [True]
    assert [(e.failures, e.retries, e.parallelism) for e in recorder.epochs] == [
        (1, 1, 2),
        (0, 0, 2),
    ]
    replay = [i for i in backend.invocations if i.mode is Mode.TRAIN and i.round == 2]
    assert [(i.func_id, i.epoch) for i in replay] == [(1, 0)]
    lane = epoch_orders(TRAIN_SIZE, 2, seed=0, epoch=0)[1]
    assert len(replay[0].order) == len(lane) - 2 * 16  # from the sample where the round began
    assert recorder.invocations[1] == 1  # counted as a failed invocation
    exactly_once(backend, 2)


def test_past_the_retry_budget_the_survivors_take_the_lost_samples(stores):
    job, recorder, backend = make_job(
        stores, lambda e, f, r: "die" if (f, r) == (0, 1) else 1.0, k=1, max_retries=0
    )
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert recorder.lost == [False]
    assert recorder.epochs[0].parallelism == 1 and recorder.epochs[0].failures == 1
    assert recorder.epochs[0].parallelism_path == [2, 1]
    assert job.services.slots.asked == [("want", 1)]  # its slot goes back to the scheduler
    exactly_once(backend, 1)


class SlowToStopBackend(ScriptedBackend):
    """Functions take a moment to return after their last round (saving, say); `running`
    is the train invocations whose futures are not done yet."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.futures = []

    def invoke(self, invocations, *, sync, log):
        futures = super().invoke(invocations, sync=_Slow(sync), log=log)
        trains = [f for f, i in zip(futures, invocations, strict=True) if i.mode is Mode.TRAIN]
        self.futures += trains
        return futures

    @property
    def running(self):
        return sum(not f.done() for f in self.futures)


class _Slow:
    def __init__(self, sync):
        self._sync = sync

    def publish(self, report):
        release = self._sync.publish(report)
        if not release.proceed:
            time.sleep(0.2)
        return release

    def __getattr__(self, name):
        return getattr(self._sync, name)


class SchedulerSlots:
    """The job's slots from a real scheduler; records whenever the task held fewer slots
    than it had functions running (capacity given to another task while they ran)."""

    def __init__(self, scheduler, backend):
        self.scheduler, self.backend = scheduler, backend
        self.oversubscribed = []

    def _check(self, grant):
        if self.backend.running > grant.parallelism:
            self.oversubscribed.append((self.backend.running, grant.parallelism))
        return grant.parallelism

    def want(self, parallelism):
        return self._check(self.scheduler.resize("task1", parallelism))

    def answer(self, parallelism):
        return self._check(self.scheduler.answer("task1", parallelism))

    def busy(self):
        return sum(self.scheduler.running().values())


def test_a_dropped_function_gives_its_slot_back_only_when_the_survivors_stop(stores):
    """A shrink for a queued task is pending when a function is lost for good: the task
    keeps its slots until its survivors stop at the round boundary, so the queued task
    never starts on cores they still use."""
    datasets, models, _ = stores
    scheduler = Scheduler(3)
    scheduler.submit("task1", 3, elastic=True)
    jobs = []

    def script(epoch, func_id, round_index):
        if (epoch, func_id, round_index) == (0, 0, 1):
            [resize] = [d for d in scheduler.submit("task2", 2) if isinstance(d, Resize)]
            assert resize.parallelism == 1  # task1 is asked to shrink from 3 to 1
            jobs[0].request_parallelism(resize.parallelism, resize.reason)
            return "die"
        return 1.0

    backend = SlowToStopBackend(datasets, models, script)
    job, recorder, _ = make_job(stores, None, parallelism=3, k=1, max_retries=0, backend=backend)
    slots = SchedulerSlots(scheduler, backend)
    job.services = replace(job.services, slots=slots)
    jobs.append(job)
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert slots.oversubscribed == []
    assert recorder.epochs[0].parallelism_path == [3, 1]
    exactly_once(backend, 1)


class FullBackend(ScriptedBackend):
    """No worker for a replacement: the call after a death finds no slot (a lost Ray node)."""

    refused = False

    def invoke(self, invocations, *, sync, log):
        if self.died and not self.refused:
            self.refused = True
            raise BackendError("no live Ray node has room for 1 more function(s)")
        return super().invoke(invocations, sync=sync, log=log)


def test_with_no_worker_for_a_replacement_the_survivors_take_the_samples(stores):
    datasets, models, _ = stores
    backend = FullBackend(
        datasets, models, lambda e, f, r: "die" if (e, f, r) == (0, 1, 1) else 1.0
    )
    job, recorder, _ = make_job(stores, None, k=1, backend=backend)
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert recorder.lost == [False]  # no retry is counted for a replacement that never ran
    record = recorder.epochs[0]
    assert (record.failures, record.retries, record.parallelism) == (1, 0, 1)
    exactly_once(backend, 1)


class OneSlotLeftBackend(FullBackend):
    """After the death, no replacement, and no gang of more than one function."""

    def invoke(self, invocations, *, sync, log):
        if self.refused and len(invocations) > 1:
            raise BackendError("no live Ray node has room for 1 more function(s)")
        return super().invoke(invocations, sync=sync, log=log)


def test_a_larger_n_with_no_workers_for_it_shrinks_again_and_trains_on(stores):
    datasets, models, _ = stores
    jobs = []

    def script(epoch, func_id, round_index):
        if (epoch, func_id, round_index) == (0, 1, 1):
            return "die"
        if (epoch, round_index) == (1, 1):
            jobs[0].request_parallelism(2, "a slot was freed")  # the lost node's slot
        return 1.0

    backend = OneSlotLeftBackend(datasets, models, script)
    job, recorder, _ = make_job(stores, None, k=1, epochs=2, backend=backend)
    jobs.append(job)
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert [e.parallelism for e in recorder.epochs] == [1, 1]
    assert any("no workers for N=2" in line for line in recorder.logs), recorder.logs
    exactly_once(backend, 2)


def test_the_last_function_lost_past_the_budget_fails_the_task(stores):
    job, _, _ = make_job(
        stores, lambda e, f, r: "die" if r == 0 else 1.0, parallelism=1, max_retries=0
    )
    outcome = job.run()
    assert outcome.state is TaskState.FAILED and "every function" in outcome.error


class DiesInValidate(ScriptedBackend):
    """Every validate invocation loses its worker (a hook that os._exit()s, say)."""

    def _run(self, inv, sync, future):
        if inv.mode is Mode.VALIDATE:
            future.set_exception(BackendError(f"the worker running function {inv.func_id} died"))
            return
        super()._run(inv, sync, future)


def test_a_validation_that_always_loses_its_worker_fails_the_task_past_the_budget(stores):
    datasets, models, _ = stores
    backend = DiesInValidate(datasets, models, lambda e, f, r: 1.0)
    job, recorder, _ = make_job(stores, None, backend=backend, max_retries=2, epochs=1)
    outcome = job.run()
    assert outcome.state is TaskState.FAILED
    assert "lost during validate and the task's 2 retries are spent" in outcome.error
    validations = [inv for inv in backend.invocations if inv.mode is Mode.VALIDATE]
    assert len(validations) == 2 + 2  # both shards, then one retry each: the budget of 2
    assert sum("lost" in line for line in recorder.logs) >= 3


def test_n_changes_up_and_down_mid_epoch_and_every_sample_is_trained_once(stores):
    changes = {2: 3, 4: 1, 6: 2}  # after merged round -> new N
    jobs = []

    def script(epoch, func_id, round_index):
        wanted = changes.get(round_index + 1) if (epoch, func_id) == (0, 0) else None
        if wanted is not None:  # the scheduler's request arrives during the round
            del changes[round_index + 1]
            jobs[0].request_parallelism(wanted, f"test wants {wanted}")
        return 1.0

    job, recorder, backend = make_job(stores, script, k=1, epochs=2)
    jobs.append(job)
    assert job.run().state is TaskState.SUCCEEDED
    sizes = Counter(
        i.parallelism for i in backend.invocations if i.mode is Mode.TRAIN and i.epoch == 0
    )
    assert set(sizes) == {1, 2, 3}
    first, second = recorder.epochs
    assert first.parallelism_path == [2, 3, 1, 2] and first.parallelism == 2
    assert second.parallelism_path is None
    assert first.samples == second.samples == TRAIN_SIZE
    at_three = f"{0.01 * math.sqrt(3):g}"  # each function's lr: lr x sqrt(N), the default
    assert f"N 3 -> 1 at round 4 of epoch 1: test wants 1, lr {at_three} -> 0.01" in recorder.logs
    assert job.services.slots.asked == [("answer", 3), ("answer", 1), ("answer", 2)]
    exactly_once(backend, 2)


def test_stop_checkpoints_the_exact_position_and_resume_continues_from_it(stores):
    jobs = []

    def script(epoch, func_id, round_index):
        if (epoch, func_id, round_index) == (1, 0, 2):
            jobs[0].stop()  # a `task stop` arriving during round 3 of epoch 2
        return 1.0

    job, recorder, backend = make_job(stores, script, epochs=2, k=1)
    jobs.append(job)
    assert job.run().state is TaskState.STOPPED
    assert len(recorder.epochs) == 1 and recorder.rounds[-1] == (2, 3)
    checkpoint = stores[2].load("task1")
    assert checkpoint.label == "epoch 2, round 3 (96 samples merged)"
    assert len(checkpoint.records) == 1
    assert stores[1].has_final("task1")  # the model as it stopped, for inference

    resumed, recorder2, _ = make_job(stores, None, epochs=2, k=1, backend=backend)
    backend.script = lambda e, f, r: 1.0
    assert resumed.run().state is TaskState.SUCCEEDED
    assert len(recorder2.epochs) == 2 and recorder2.epochs[1].rounds == 8
    train = [i for i in backend.invocations if i.mode is Mode.TRAIN]
    assert [i.round for i in train[-2:]] == [3, 3]  # both lanes continue at round 4
    exactly_once(backend, 2)


def test_the_n_path_of_an_epoch_survives_a_stop_and_resume(stores):
    """N went 2 -> 3 mid-epoch, then the task stopped; the resumed run (at N=2) records
    the whole epoch's path, not only its own stretch."""
    jobs = []

    def script(epoch, func_id, round_index):
        if (func_id, round_index) == (0, 1):
            jobs[0].request_parallelism(3, "test wants 3")
        if (func_id, round_index) == (0, 3):
            jobs[0].stop()
        return 1.0

    job, recorder, backend = make_job(stores, script, epochs=1, k=1)
    jobs.append(job)
    assert job.run().state is TaskState.STOPPED
    assert recorder.epochs == []
    resumed, recorder2, _ = make_job(stores, None, epochs=1, k=1, backend=backend)
    backend.script = lambda e, f, r: 1.0
    assert resumed.run().state is TaskState.SUCCEEDED
    assert recorder2.epochs[0].parallelism_path == [2, 3, 2]
    exactly_once(backend, 1)


def test_goal_accuracy_ends_the_task_early(stores):
    job, recorder, _ = make_job(
        stores,
        lambda e, f, r: 1.0,
        epochs=5,
        validate_every=1,
        goal_accuracy=85,
        accuracy=90.0,
    )
    outcome = job.run()
    assert outcome.state is TaskState.SUCCEEDED
    assert len(recorder.epochs) == 1


def test_a_hung_function_fails_the_task_after_the_round_timeout(stores):
    job, _, backend = make_job(
        stores, lambda e, f, r: 1.0 if f == 0 else "hang", timeout_s=0.5, k=-1
    )
    outcome = job.run()
    assert outcome.state is TaskState.FAILED
    assert "function(s) [1] made no progress" in outcome.error
    assert backend.cancelled == ["task1"]
