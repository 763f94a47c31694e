"""The K-AVG round barrier, driven by threads."""

import threading

from kubeml.control.job.barrier import RoundBarrier
from kubeml.runtime.sync import Release, RoundReport


def _report(func_id, round_index, final=False, samples=10):
    return RoundReport("t", func_id, round_index, samples, 1.0, 1, final)


def _publish_in_thread(barrier, report, out):
    t = threading.Thread(target=lambda: out.append((report.func_id, barrier.publish(report))))
    t.start()
    return t


def test_round_merges_once_every_live_function_has_published():
    merged = []
    barrier = RoundBarrier(
        [0, 1], lambda r, reports: merged.append((r, len(reports))) or Release(proceed=True)
    )
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    t.join(0.2)
    assert t.is_alive() and merged == []  # still waiting for function 1
    assert barrier.publish(_report(1, 0)).proceed
    t.join(2)
    assert merged == [(0, 2)] and out[0][1].proceed


def test_a_function_that_finished_its_shard_leaves_the_next_rounds():
    merged = []
    barrier = RoundBarrier([0, 1], lambda r, reports: merged.append(r) or Release(proceed=True))
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    barrier.publish(_report(1, 0, final=True))
    t.join(2)
    assert barrier.publish(_report(0, 1)).proceed  # alone now: no wait
    assert merged == [0, 1]


def test_stop_answer_reaches_every_function():
    barrier = RoundBarrier([0, 1], lambda r, reports: Release(proceed=False))
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    assert not barrier.publish(_report(1, 0)).proceed
    t.join(2)
    assert not out[0][1].proceed


def test_failure_releases_waiters_and_is_never_merged():
    merged = []
    barrier = RoundBarrier([0, 1], lambda r, reports: merged.append(r) or Release(proceed=True))
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    t.join(0.1)
    barrier.fail(1, RuntimeError("boom"))
    t.join(2)
    assert out and not out[0][1].proceed
    assert merged == []
    assert not barrier.publish(_report(0, 1)).proceed


def test_a_lost_worker_holds_the_round_until_its_replacement_publishes():
    from kubeml.errors import BackendError

    merged = []
    barrier = RoundBarrier(
        [0, 1], lambda r, reports: merged.append((r, len(reports))) or Release(proceed=True)
    )
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    barrier.fail(1, BackendError("worker died"))
    t.join(0.2)
    assert t.is_alive() and merged == [] and barrier.lost.keys() == {1}
    barrier.join(1)
    assert barrier.publish(_report(1, 0)).proceed  # the replacement, in the same round
    t.join(2)
    assert merged == [(0, 2)] and out[0][1].proceed


def test_a_dropped_function_lets_the_round_complete_without_it():
    from kubeml.errors import BackendError

    merged = []
    barrier = RoundBarrier(
        [0, 1],
        lambda r, reports: merged.append([x.func_id for x in reports]) or Release(proceed=True),
    )
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    t.join(0.1)
    barrier.fail(1, BackendError("worker died"))
    barrier.drop(1)
    t.join(2)
    assert merged == [[0]] and out[0][1].proceed
    assert barrier.live() == {0}


def test_a_lost_attempts_late_report_never_merges():
    """Ray answers a function's publish on another thread than its failure: a report that
    arrives after the attempt failed is refused, by the attempt and by the barrier (a
    report that passed the attempt's check just before the failure), until the
    replacement joins."""
    from kubeml.control.job.barrier import AttemptSync
    from kubeml.errors import BackendError

    merged = []
    barrier = RoundBarrier(
        [0, 1], lambda r, reports: merged.append([x.samples for x in reports]) or Release(True)
    )
    attempts = {0: 0, 1: 0}
    first = AttemptSync(barrier, attempts, [0, 1])
    out = []
    t = _publish_in_thread(barrier, _report(0, 0), out)
    first.fail(1, BackendError("the worker running function 1 died"))
    assert not first.publish(_report(1, 0, samples=99)).proceed  # late: refused
    # One that passed the attempt's check just before the failure, and reaches the barrier
    # after it:
    stale = _publish_in_thread(barrier, _report(1, 0, samples=77), out)
    stale.join(2)
    assert merged == [] and not out[-1][1].proceed  # refused: function 1 is lost
    attempts[1] += 1
    barrier.join(1)  # the replacement takes the place, the stale report goes
    replay = AttemptSync(barrier, attempts, [1])
    assert replay.publish(_report(1, 0, samples=10)).proceed
    t.join(2)
    stale.join(2)
    assert merged == [[10, 10]]


def _replies():
    """A reply for `publish_then` and what it received, with the thread that sent it."""
    got: list[tuple[Release, str]] = []
    arrived = threading.Event()

    def reply(release):
        got.append((release, threading.current_thread().name))
        arrived.set()

    return reply, got, arrived


def test_publish_then_answers_without_waiting_and_the_merge_runs_on_its_own_thread():
    merged = []
    barrier = RoundBarrier(
        [0, 1, 2],
        lambda r, reports: merged.append((r, threading.current_thread().name)) or Release(True),
    )
    replies = [_replies() for _ in range(3)]
    for func_id in (0, 1):
        barrier.publish_then(_report(func_id, 0), replies[func_id][0])  # returns at once
    assert merged == [] and not any(got for _, got, _ in replies)
    caller = threading.current_thread().name
    barrier.publish_then(_report(2, 0), replies[2][0])  # the last: the round merges elsewhere
    for _, _, arrived in replies:
        assert arrived.wait(5)
    assert [r for r, _ in merged] == [0] and merged[0][1] != caller
    assert all(got[0][0].proceed and got[0][1] == merged[0][1] for _, got, _ in replies)


def test_a_blocking_publish_and_publish_then_meet_in_one_round():
    barrier = RoundBarrier([0, 1], lambda r, reports: Release(proceed=True))
    reply, got, arrived = _replies()
    barrier.publish_then(_report(0, 0), reply)
    assert barrier.publish(_report(1, 0)).proceed  # the last arrival merges and answers both
    assert arrived.wait(5) and got[0][0].proceed


def test_publish_then_hears_of_a_failure_and_a_lost_functions_reply_is_dropped():
    from kubeml.errors import BackendError

    barrier = RoundBarrier([0, 1, 2], lambda r, reports: Release(proceed=True))
    lost_reply, lost_got, _ = _replies()
    barrier.publish_then(_report(2, 0), lost_reply)
    barrier.fail(2, BackendError("worker died"))  # its report and reply are forgotten
    reply, got, arrived = _replies()
    barrier.publish_then(_report(0, 0), reply)
    barrier.fail(1, RuntimeError("user code raised"))  # the epoch ends: everyone is told
    assert arrived.wait(5) and not got[0][0].proceed
    assert lost_got == []
    late, late_got, late_arrived = _replies()
    barrier.publish_then(_report(0, 1), late)  # after the failure: answered at once
    assert late_arrived.is_set() and not late_got[0][0].proceed


def test_a_reply_that_raises_stops_no_other():
    barrier = RoundBarrier([0, 1], lambda r, reports: Release(proceed=True))

    def broken(release):
        raise OSError("the function's socket closed")

    reply, got, arrived = _replies()
    barrier.publish_then(_report(0, 0), broken)
    barrier.publish_then(_report(1, 0), reply)
    assert arrived.wait(5) and got[0][0].proceed


def test_rounds_merged_one_after_another_reuse_the_merge_thread_and_keep_no_reports():
    """A long epoch through `publish_then`: each round is merged once, on a thread that is
    reused (starting one per round made the caller wait for it to start), and a merged
    round's reports are not kept (an arrival once looked through every earlier round)."""
    merged, threads = [], set()

    def merge(round_index, reports):
        merged.append((round_index, [r.func_id for r in reports]))
        threads.add(threading.current_thread())
        return Release(proceed=True)

    barrier = RoundBarrier([0, 1, 2], merge)
    for round_index in range(60):
        replies = [_replies() for _ in range(3)]
        for func_id in (2, 0, 1):
            barrier.publish_then(_report(func_id, round_index), replies[func_id][0])
        for _, got, arrived in replies:
            assert arrived.wait(5) and got[0][0].proceed
    assert merged == [(r, [0, 1, 2]) for r in range(60)]
    assert len(threads) <= 2 and all(t.name == "kubeml-merge" for t in threads)
    assert barrier._pending == {}
    assert barrier.waiting_for() == {0, 1, 2}


def test_a_late_report_of_a_merged_round_gets_that_rounds_release_and_opens_nothing():
    barrier = RoundBarrier([0, 1], lambda r, reports: Release(proceed=True, threads=7))
    barrier.publish_then(_report(0, 0), _replies()[0])
    barrier.publish(_report(1, 0))
    reply, got, arrived = _replies()
    barrier.publish_then(_report(1, 0), reply)  # the same round again: answered at once
    assert arrived.is_set() and got[0][0] == Release(proceed=True, threads=7)
    assert barrier._pending == {} and barrier.waiting_for() == {0, 1}
