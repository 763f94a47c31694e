"""The one rule for lost, failed and hung functions, as a table: event x situation -> decision."""

from __future__ import annotations

import pytest

from kubeml.control.job.decisions import (
    Drop,
    Fail,
    Failed,
    Forget,
    Hung,
    Lost,
    NoReplacement,
    NoWorkers,
    Phase,
    Replay,
    Shrink,
    Situation,
    decide,
)
from kubeml.errors import BackendError, FunctionError, FunctionMemoryError, FunctionTimeoutError

DIED = BackendError("the worker running function 1 died")
RAISED = FunctionError("user code raised")
OVER = FunctionMemoryError("out of memory: function 1 used more than 1024 MB")


def _s(phase=Phase.TRAIN, parallelism=3, retries=0, max_retries=2, **kw) -> Situation:
    return Situation(phase, parallelism, retries, max_retries, **kw)


ROWS = [
    # (row, event, situation, expected decision)
    ("a lane already done", Lost(1, DIED), _s(lane_done=True),
     Forget(1, "its lane was already done")),
    ("the job stopping", Lost(1, DIED), _s(stopping=True), Forget(1, "the task is stopping")),
    ("replay within the budget", Lost(1, DIED), _s(retries=1), Replay(1)),
    ("no slot for the replacement", NoReplacement(1, DIED), _s(), Drop(1, survivors=2)),
    ("no slot, and it was the last", NoReplacement(0, DIED), _s(parallelism=1), "every function"),
    ("the budget spent", Lost(1, DIED), _s(retries=2), Drop(1, survivors=2)),
    ("the last survivor lost", Lost(0, DIED), _s(parallelism=1, retries=2), "every function"),
    ("init lost within the budget", Lost(0, DIED), _s(Phase.INIT, retries=1), Replay(0)),
    ("init lost past the budget", Lost(0, DIED), _s(Phase.INIT, retries=2),
     "lost during init and the task's 2 retries are spent"),
    ("validation lost within the budget", Lost(2, DIED), _s(Phase.VALIDATE), Replay(2)),
    ("validation lost past the budget", Lost(2, DIED), _s(Phase.VALIDATE, max_retries=0),
     "lost during validate and the task's 0 retries are spent"),
    ("an error that is not a lost worker", Failed(1, RAISED), _s(), Fail(RAISED)),
    ("user code raised, even with budget", Failed(1, RAISED), _s(Phase.VALIDATE), Fail(RAISED)),
    ("over its memory limit: never replayed", Failed(1, OVER), _s(), Fail(OVER)),
    ("a backend that does not replace workers", Lost(1, DIED), _s(replaces_workers=False),
     Fail(DIED)),
    ("lost while another function's failure ends the epoch", Lost(1, DIED), _s(failing=True),
     Fail(DIED)),
    ("no workers at invoke", NoWorkers(3, DIED), _s(), Shrink(2)),
    ("no workers for a single function", NoWorkers(1, DIED), _s(parallelism=1), Fail(DIED)),
    ("no workers, backend cannot replace", NoWorkers(3, DIED), _s(replaces_workers=False),
     Fail(DIED)),
    ("a hang in training", Hung((1, 2), 5.0), _s(), "function(s) [1, 2] made no progress for 5 s"),
    ("a hang in validation", Hung((0,), 5.0), _s(Phase.VALIDATE), "a hung validate hook"),
]  # fmt: skip


@pytest.mark.parametrize(("event", "situation", "expected"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])  # fmt: skip
def test_every_branch_is_a_row(event, situation, expected):
    decision = decide(event, situation)
    if isinstance(expected, str):  # a failure whose error the rule writes
        assert isinstance(decision, Fail), decision
        assert expected in str(decision.error)
        assert isinstance(decision.error, BackendError | FunctionTimeoutError)
    else:
        assert decision == expected


def test_a_failure_keeps_the_users_error_itself_so_its_traceback_stays():
    decision = decide(Failed(0, RAISED), _s())
    assert isinstance(decision, Fail) and decision.error is RAISED


def test_a_stopping_task_past_its_budget_forgets_rather_than_re_splits():
    """Nothing is re-split when the epoch stops at this round boundary anyway."""
    assert decide(Lost(1, DIED), _s(stopping=True, retries=5)) == Forget(1, "the task is stopping")
