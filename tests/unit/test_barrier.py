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
