"""Gang admission and FIFO order."""

import pytest

from kubeml.control.scheduler import Scheduler
from kubeml.errors import CapacityError


def test_tasks_start_only_when_all_their_functions_fit_and_in_order():
    started = []
    s = Scheduler(4, lambda task, n: started.append((task, n)))
    s.submit("a", 3)
    s.submit("b", 2)  # does not fit beside a
    s.submit("c", 1)  # would fit, but must not jump b
    assert started == [("a", 3)]
    s.finished("a")
    assert started == [("a", 3), ("b", 2), ("c", 1)]
    assert s.free == 1


def test_parallelism_above_capacity_is_refused_with_a_clear_error():
    s = Scheduler(2, lambda task, n: None)
    with pytest.raises(CapacityError, match="parallelism 3 exceeds the capacity of 2"):
        s.submit("a", 3)


def test_queued_task_can_be_cancelled():
    started = []
    s = Scheduler(1, lambda task, n: started.append(task))
    s.submit("a", 1)
    s.submit("b", 1)
    assert s.cancel("b") and s.queued() == []
    s.finished("a")
    assert started == ["a"]


def test_resize_grows_into_free_slots_only():
    s = Scheduler(3, lambda task, n: None)
    s.submit("a", 1)
    assert s.try_resize("a", 2) == 2
    s.submit("b", 1)
    assert s.try_resize("a", 5) == 2  # nothing free
    assert s.try_resize("a", 1) == 1
    assert s.free == 1
