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
