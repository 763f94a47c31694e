"""Gang admission, FIFO order and slot sharing, as decisions the scheduler returns (it
starts and resizes nothing)."""

import random

import pytest

from kubeml.control.tasks.scheduler import Admit, Grant, Resize, Scheduler
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


def test_a_task_that_does_not_fit_takes_slots_back_from_elastic_tasks_at_their_next_round():
    s = Scheduler(4)
    s.submit("a", 3, elastic=True)
    assert s.submit("b", 2) == [Resize("a", 2, "slots taken back for task b")]
    assert s.running() == {"a": 3} and s.queued() == ["b"]  # held until a shrinks
    assert s.submit("c", 1) == []  # b first, and a is already asked
    # a's next round boundary: b starts, and c is next, so a gives its last spare slot
    assert s.answer("a", 2) == Grant(
        2, [Admit("b", 2), Resize("a", 1, "slots taken back for task c")]
    )
    assert s.answer("a", 1) == Grant(1, [Admit("c", 1)])
    assert s.running() == {"a": 1, "b": 2, "c": 1} and s.free == 0


def test_take_backs_come_from_the_largest_holder_and_never_from_static_tasks():
    s = Scheduler(7)
    s.submit("static", 2)
    s.submit("big", 3, elastic=True)
    s.submit("small", 2, elastic=True)
    reason = "slots taken back for task d"
    # 3 missing: big 3 -> 2, then the tie goes to the younger small 2 -> 1, then big 2 -> 1
    assert s.submit("d", 3) == [Resize("big", 1, reason), Resize("small", 1, reason)]
    assert s.answer("big", 1) == Grant(1, [])  # one short: d starts only with all 3
    assert s.answer("small", 1) == Grant(1, [Admit("d", 3)])
    assert s.running() == {"static": 2, "big": 1, "small": 1, "d": 3}


def test_no_slot_is_taken_back_when_the_queued_task_could_not_start_anyway():
    s = Scheduler(4)
    s.submit("a", 2, elastic=True)
    s.submit("b", 2)
    assert s.submit("c", 3) == []  # a could give 1 of the 3 missing; b is static
    assert s.running() == {"a": 2, "b": 2}


def test_freed_slots_grow_elastic_tasks_back_to_their_wish_the_oldest_first():
    s = Scheduler(4)
    s.submit("old", 2, elastic=True)
    s.submit("young", 2, elastic=True)
    s.submit("c", 2)
    s.answer("old", 1)
    assert s.answer("young", 1) == Grant(1, [Admit("c", 2)])
    assert s.submit("e", 1) == []  # nothing left to take back: e waits
    freed = "slots freed (task c ended)"
    # e starts first; of the two tasks at 1 function, the older grows into the last slot
    assert s.finished("c") == [Admit("e", 1), Resize("old", 2, freed)]
    assert s.answer("old", 2) == Grant(2, [])
    assert s.finished("e") == [Resize("young", 2, "slots freed (task e ended)")]


def test_a_shrink_asked_of_a_task_caps_what_its_policy_gets():
    s = Scheduler(2)
    s.submit("a", 2, elastic=True)
    assert s.submit("b", 1) == [Resize("a", 1, "slots taken back for task b")]
    # a's epoch ends before its next round: its policy asks for 2, the shrink still holds
    assert s.resize("a", 2) == Grant(1, [Admit("b", 1)])
    assert s.finished("b") == [Resize("a", 2, "slots freed (task b ended)")]


def test_a_task_that_chose_fewer_functions_is_not_grown_past_its_choice():
    s = Scheduler(3)
    s.submit("a", 2, elastic=True)
    s.submit("b", 1)
    assert s.resize("a", 1) == Grant(1, [])  # its policy: one function was faster
    assert s.finished("b") == []
    assert s.answer("a", 3) == Grant(1, [])  # a stale request does not grow it either


def test_a_growth_asked_is_withdrawn_when_a_new_task_takes_the_slot():
    s = Scheduler(3)
    s.submit("a", 3, elastic=True)
    s.submit("b", 1)
    s.answer("a", 2)
    assert s.finished("b") == [Resize("a", 3, "slots freed (task b ended)")]
    assert s.submit("c", 1) == [Admit("c", 1), Resize("a", 2, "slots freed")]
    assert s.answer("a", 3) == Grant(2, [])  # the request it saw first: nothing is free
    assert s.running() == {"a": 2, "c": 1}


def test_a_cancelled_task_releases_the_shrink_asked_for_it():
    s = Scheduler(2)
    s.submit("a", 2, elastic=True)
    assert s.submit("b", 1) == [Resize("a", 1, "slots taken back for task b")]
    assert s.cancel("b")
    assert s.finished("b") == [Resize("a", 2, "slots freed (task b ended)")]
    assert s.answer("a", 2) == Grant(2, [])


def test_random_traffic_never_oversubscribes_and_never_strands_the_queue():
    rng = random.Random(0)
    for _ in range(200):
        _random_traffic(rng, Scheduler(5))


def _random_traffic(rng: random.Random, s: Scheduler) -> None:
    """30 random events, jobs answering the resizes asked of them in any order."""
    asked: dict[str, int] = {}  # what each running task was last asked (its job's view)
    started: list[str] = []
    submitted: dict[str, tuple[int, bool]] = {}  # task -> (N, elastic)

    def act(decisions):
        for d in decisions:
            if isinstance(d, Admit):
                started.append(d.task_id)
            else:
                asked[d.task_id] = d.parallelism

    for step in range(30):
        running = list(s.running())
        op = rng.random()
        if op < 0.35 or not running:
            task_id, n, elastic = f"t{step}", rng.randint(1, 5), rng.random() < 0.7
            submitted[task_id] = (n, elastic)
            act(s.submit(task_id, n, elastic=elastic))
        elif op < 0.55:
            task_id = rng.choice(running)
            asked.pop(task_id, None)
            act(s.finished(task_id))
        elif op < 0.75:
            task_id = rng.choice(running)
            act(s.resize(task_id, rng.randint(0, 6)).decisions)
        elif asked:
            task_id = rng.choice(sorted(asked))
            act(s.answer(task_id, asked.pop(task_id)).decisions)
        held = s.running()
        assert sum(held.values()) <= 5 and all(n >= 1 for n in held.values())
        assert started == list(submitted)[: len(started)]  # FIFO, each with all its N
    while asked:  # every job answers at its next round boundary
        task_id = sorted(asked)[0]
        act(s.answer(task_id, asked.pop(task_id)).decisions)
    if s.queued():  # the head waits only when even all spare slots would not do
        spare = sum(n - 1 for t, n in s.running().items() if submitted[t][1])
        assert submitted[s.queued()[0]][0] > s.free + spare
