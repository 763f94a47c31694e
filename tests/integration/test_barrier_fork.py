"""The round barrier in a process forked after its merge threads started."""

import os

from kubeml.control.job.barrier import RoundBarrier
from kubeml.runtime.sync import Release
from tests.unit.test_barrier import _replies, _report


def test_a_forked_child_merges_on_threads_of_its_own():
    """The merge threads are the parent's: a child forked after they started (a server
    started by fork) must start its own, not wait for threads it does not have."""
    barrier = RoundBarrier([0], lambda r, reports: Release(proceed=True))
    reply, got, arrived = _replies()
    barrier.publish_then(_report(0, 0), reply)  # the parent now has an idle merge thread
    assert arrived.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: merge a round of a barrier of its own, then say how it went
        child = RoundBarrier([0], lambda r, reports: Release(proceed=True))
        reply, got, arrived = _replies()
        child.publish_then(_report(0, 0), reply)
        os._exit(0 if arrived.wait(5) and got[0][0].proceed else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
