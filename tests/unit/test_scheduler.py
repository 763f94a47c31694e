"""Gang admission and FIFO order, as decisions the scheduler returns (it starts nothing)."""

import pytest

from kubeml.control.scheduler import Admit, Grant, Scheduler
from kubeml.errors import CapacityError


def test_tasks_are_admitted_only_when_all_their_functions_fit_and_in_order():
    s = Scheduler(4)
    assert s.submit("a", 3) == [Admit("a", 3)]
    assert s.submit("b", 2) == []  # does not fit beside a
    assert s.submit("c", 1) == []  # would fit, but must not jump b
    assert s.queued() == ["b", "c"]
    assert s.finished("a") == [Admit("b", 2), Admit("c", 1)]
    assert s.running() == {"b": 2, "c": 1} and s.free == 1


def test_parallelism_above_capacity_is_refused_with_a_clear_error():
    s = Scheduler(2)
    with pytest.raises(CapacityError, match="parallelism 3 exceeds the capacity of 2"):
        s.submit("a", 3)
    assert s.queued() == [] and s.free == 2


def test_queued_task_can_be_cancelled():
    s = Scheduler(1)
    assert s.submit("a", 1) == [Admit("a", 1)]
    assert s.submit("b", 1) == []
    assert s.cancel("b") and s.queued() == []
    assert not s.cancel("b")
    assert s.finished("a") == []
    assert s.free == 1


def test_resize_grows_into_free_slots_only():
    s = Scheduler(3)
    s.submit("a", 1)
    assert s.resize("a", 2) == Grant(2)
    assert s.submit("b", 1) == [Admit("b", 1)]
    assert s.resize("a", 5) == Grant(2)  # nothing free
    assert s.resize("a", 0) == Grant(1)  # never below one function
    assert s.free == 1


def test_growing_waits_behind_queued_tasks_and_shrinking_admits_them():
    s = Scheduler(4)
    s.submit("a", 3)
    assert s.submit("b", 2) == []
    assert s.resize("a", 4) == Grant(3)  # b waits, so a may not take the free slot
    assert s.resize("a", 2) == Grant(2, [Admit("b", 2)])
    assert s.running() == {"a": 2, "b": 2} and s.free == 0


def test_finishing_a_task_that_holds_nothing_changes_nothing():
    s = Scheduler(2)
    s.submit("a", 2)
    assert s.finished("ghost") == []
    assert s.running() == {"a": 2}
