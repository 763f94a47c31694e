"""The function side of the relay: printing is batched, the heartbeat is rate-limited."""

import time

from kubeml.backends.relay import Endpoint, LogLines, Progress
from kubeml.backends.relay.function_side import _LineWriter


class Recording:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)

    def receive(self):
        raise AssertionError("nothing is asked in these tests")


def test_heavy_printing_is_sent_in_a_few_batches_and_nothing_is_lost():
    transport = Recording()
    writer = _LineWriter(Endpoint(transport), "function-0")
    for i in range(10_000):
        writer.write(f"line {i}\n")
    writer.write("no newline yet")
    writer.flush()
    batches = [m for m in transport.sent if isinstance(m, LogLines)]
    assert len(batches) <= 10_000 // _LineWriter.MAX_LINES + 2
    lines = [line for batch in batches for line in batch.lines]
    assert lines == [f"line {i}" for i in range(10_000)] + ["no newline yet"]


def test_the_heartbeat_crosses_at_most_every_half_second_and_sends_waiting_lines():
    transport = Recording()
    endpoint = Endpoint(transport)
    writer = endpoint.writer = _LineWriter(endpoint, "function-0")
    writer.write("a lone line\n")  # too soon to send on its own
    for _ in range(1000):
        endpoint.progress(0)
    assert sum(isinstance(m, Progress) for m in transport.sent) == 1
    writer.EVERY_S = 0.0
    endpoint._last_beat = endpoint._last_look = time.monotonic() - 1
    endpoint.progress(0)
    assert LogLines("function-0", ("a lone line",)) in transport.sent


def test_a_longer_heartbeat_still_sends_printed_lines_every_half_second():
    """An invocation's heartbeat follows its round timeout (600 s: every 5 s); a line
    printed in a quiet stretch still leaves within about half a second."""
    from kubeml.runtime.sync import heartbeat_every

    assert [heartbeat_every(t) for t in (1, 5, 10, 60, 600, 86_400)] == [
        0.5, 0.5, 0.5, 3.0, 5.0, 5.0,
    ]  # fmt: skip
    transport = Recording()
    endpoint = Endpoint(transport)
    endpoint.heartbeat_s = 5.0
    writer = endpoint.writer = _LineWriter(endpoint, "function-0")
    writer.EVERY_S = 0.0
    endpoint.progress(0)  # the first batch beats at once
    writer.write("printed after the first batch\n")
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        endpoint.progress(0)
        time.sleep(0.01)
    assert sum(isinstance(m, Progress) for m in transport.sent) == 1
    assert LogLines("function-0", ("printed after the first batch",)) in transport.sent
    endpoint._last_beat -= 5.0  # five seconds on
    endpoint._last_look -= 0.5
    endpoint.progress(0)
    assert sum(isinstance(m, Progress) for m in transport.sent) == 2


def test_a_release_counts_as_a_heartbeat():
    """The barrier marks every function it releases as seen: a batch right after a release
    sends no heartbeat, however long the round waited at the barrier."""
    from kubeml.backends.relay import Released
    from kubeml.runtime.sync import Release, RoundReport

    class Answering(Recording):
        def receive(self):
            time.sleep(0.6)  # the barrier waits for a slower function, longer than a beat
            return Released(Release(proceed=True))

    transport = Answering()
    endpoint = Endpoint(transport)
    endpoint.progress(0)  # the round's first batch
    report = RoundReport("t", 0, round=1, samples=64, loss_sum=1.0, batches=1, final=False)
    endpoint.publish(report)
    endpoint.progress(0)  # the next round's first batch
    assert sum(isinstance(m, Progress) for m in transport.sent) == 1
