"""The job stepped round by round by a scripted backend: deaths, resizes and stops at chosen
rounds, and assertions on the decisions and the state the job exposes, not on its log."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from kubeml.api.schemas import TaskState
from kubeml.control.job.decisions import Drop, Replay
from kubeml.control.job.resize import LrRule, Resize
from kubeml.runtime.invocation import Mode
from tests.unit.scripted import TRAIN_SIZE, ScriptedBackend, exactly_once, make_job, make_stores


@pytest.fixture
def stores(tmp_path):
    return make_stores(tmp_path)


def _decisions(job):
    return [(type(e).__name__, d) for e, d in job.state.log if d is not None]


def test_a_lost_function_within_the_budget_is_replayed_and_the_state_counts_it(stores):
    job, _, backend = make_job(
        stores, lambda e, f, r: "die" if (e, f, r) == (0, 1, 2) else 1.0, k=1, max_retries=2
    )
    assert job.run().state is TaskState.SUCCEEDED
    assert _decisions(job) == [("Lost", Replay(1))]
    assert job.state.retries == 1 and job.state.parallelism == 2
    assert job.state.attempts[1] == job.state.attempts[0] + 1  # a fresh attempt for func 1
    exactly_once(backend, 1)


def test_a_drop_past_the_budget_scales_the_lr_like_every_other_change_of_n(stores):
    """The defect this rule fixes: a function dropped past the retry budget set N directly,
    so with `--lr-scaling linear` the survivors trained on at the old N's lr."""
    job, recorder, backend = make_job(
        stores,
        lambda e, f, r: "die" if (e, f, r) == (0, 1, 1) else 1.0,
        k=1,
        max_retries=0,
        lr=0.02,
        lr_scaling="linear",
        epochs=2,
    )
    assert job.run().state is TaskState.SUCCEEDED
    assert _decisions(job) == [("Lost", Drop(1, survivors=1))]
    assert job.state.parallelism == 1 and job.state.lr == pytest.approx(0.02)
    [change] = [e for e, d in job.state.log if isinstance(e, Resize)]
    assert (change.parallelism, change.lr, change.lr_from) == (1, pytest.approx(0.02), 0.04)
    before = [i for i in backend.invocations if i.mode is Mode.TRAIN and i.parallelism == 2]
    assert before and all(i.lr == pytest.approx(0.04) for i in before)  # lr x N from the start
    after = [i for i in backend.invocations if i.mode is Mode.TRAIN and i.parallelism == 1]
    assert after and all(i.lr == pytest.approx(0.02) for i in after)
    assert after[0].lr_warmup_from == 0.04  # the first segment at the new N ramps up to it
    assert [r.lr for r in recorder.epochs] == [pytest.approx(0.02)] * 2
    exactly_once(backend, 2)


def test_a_resize_and_a_stop_at_chosen_rounds_leave_the_exact_position(stores):
    jobs = []

    def script(epoch, func_id, round_index):
        if (epoch, func_id, round_index) == (0, 0, 1):
            jobs[0].request_parallelism(3, "the test's resize")
        if (epoch, func_id, round_index) == (0, 0, 4):
            jobs[0].stop()
        return 1.0

    job, _, _ = make_job(stores, script, k=1, lr=0.03, lr_scaling="linear")
    jobs.append(job)
    assert job.run().state is TaskState.STOPPED
    position = job.state.position
    assert position.round == 5 and position.path == [2, 3]
    assert position.parallelism == 3 and job.state.lr == pytest.approx(0.09)
    merged = Counter(int(s) for s in position.trained_samples())
    assert max(merged.values()) == 1 and sum(merged.values()) == position.samples
    checkpoint = stores[2].load("task1")
    assert checkpoint.position.round == 5 and checkpoint.position.samples == position.samples


class CappedSlots:
    """A scheduler with `cap` slots for this task, changing at random; keeps each grant."""

    def __init__(self, rng):
        self.rng, self.cap, self.granted = rng, 4, 2
        self.lock = threading.Lock()

    def _grant(self, parallelism):
        with self.lock:
            self.granted = max(1, min(parallelism, self.cap))
            return self.granted

    def want(self, parallelism):
        return self._grant(parallelism)

    def answer(self, parallelism):
        return self._grant(parallelism)

    def busy(self):
        return 0


class CheckedBackend(ScriptedBackend):
    """Records, for every train invocation, the slots granted when it started."""

    def __init__(self, *args, slots, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots, self.starts = slots, []

    def invoke(self, invocations, *, sync, log):
        for inv in invocations:
            if inv.mode is Mode.TRAIN:
                self.starts.append((inv.parallelism, self.slots.granted, inv.lr))
        return super().invoke(invocations, sync=sync, log=log)


@pytest.mark.parametrize("seed", range(6))
def test_requests_from_other_threads_at_random_moments_keep_the_invariants(stores, seed):
    """Stop and resize requests (and deaths) arrive at random moments; after each task:
    every sample trained once per finished epoch and at most once in a stopped one, N
    within the slots granted, and the lr the rule gives for that N."""
    rng = random.Random(seed)
    datasets, models, _ = stores
    slots = CappedSlots(rng)
    deaths = {(0, rng.randrange(2), rng.randrange(1, 4))}
    backend = CheckedBackend(
        datasets,
        models,
        lambda e, f, r: "die" if (e, f, r) in deaths else 1.0,
        slots=slots,
    )
    job, recorder, _ = make_job(
        stores, None, backend=backend, k=1, epochs=2, lr=0.02, lr_scaling="linear",
        max_retries=rng.choice([0, 3]),
    )  # fmt: skip
    job.services = job.services.__class__(**{**job.services.__dict__, "slots": slots})
    stop_at = rng.choice([None, rng.uniform(0.05, 0.4)])

    def meddle():
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.03))
            slots.cap = rng.randint(1, 4)
            job.request_parallelism(rng.randint(1, 4), "random")
            if stop_at is not None and time.monotonic() > deadline - 0.6 + stop_at:
                job.stop()

    meddler = threading.Thread(target=meddle, daemon=True)
    meddler.start()
    outcome = job.run()
    meddler.join()
    if outcome.state is TaskState.FAILED:  # the death hit the only function, past the budget
        assert "every function of the task was lost" in outcome.error
    else:
        assert outcome.state in (TaskState.SUCCEEDED, TaskState.STOPPED)
    rule = LrRule(0.02, "linear")
    for parallelism, granted, lr in backend.starts:
        assert parallelism <= granted
        assert lr == pytest.approx(rule.at(parallelism))
    assert job.state.lr == pytest.approx(rule.at(job.state.parallelism))
    finished = len(recorder.epochs)
    counts = Counter(backend.trained)
    assert all(times == 1 for times in counts.values())
    for epoch in range(finished):
        assert sum(1 for e, _ in counts if e == epoch) == TRAIN_SIZE
    if outcome.state is TaskState.SUCCEEDED:
        assert finished == 2
