"""A node's relay for the round sockets of its functions, on real sockets in this process:
the control plane's round channels, a `NodeRelay` connected to them, and functions that
connect to the relay as a Ray function would (`rounds.connect`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from kubeml.backends.ray import node_relay
from kubeml.backends.ray.node_relay import NodeRelay
from kubeml.backends.ray.rounds import RoundChannels, RoundOffer, connect, preamble


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Rounds:
    """The control plane's answers, as the barrier gives them: once `size` reports of a
    round are in, another thread (the merge's) replies to each, in the order they came."""

    def __init__(self, size: int, reply: Callable[[Any], Any] = lambda m: ("released", m)):
        self.size, self.reply = size, reply
        self.waiting: list[tuple[Any, Any]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, sock: Any) -> None:
        message = sock.recv()
        self.threads.add(threading.current_thread().name)
        with self.lock:
            self.waiting.append((sock, message))
            if len(self.waiting) < self.size:
                return
            due, self.waiting = self.waiting, []
        threading.Thread(target=self._release, args=(due,)).start()

    def _release(self, due: list[tuple[Any, Any]]) -> None:
        for sock, message in due:
            sock.send(self.reply(message))


@pytest.fixture
def plane():
    channels = RoundChannels("127.0.0.1")
    lost = threading.Event()
    relay = NodeRelay("127.0.0.1", channels.address, channels.offer_link(lost.set))
    yield channels, relay, lost
    relay.close()
    channels.close()


def _functions(plane, answer, count: int, group: str = "task") -> list[Any]:
    channels, relay, _ = plane
    offers = [channels.offer(answer, group, via=relay.address) for _ in range(count)]
    sides = [connect(offer) for offer in offers]
    assert all(side is not None for side in sides)
    wait_until(lambda: len(relay._conns) >= count)  # the relay took them all up
    return sides


def test_a_nodes_round_is_one_message_each_way(plane):
    channels, relay, _ = plane
    rounds = Rounds(4)
    sides = _functions(plane, rounds, 4)
    for round_index in range(5):
        up, down = relay.messages_up, relay.messages_down
        for index, side in enumerate(sides):
            side.send((index, round_index))
        for index, side in enumerate(sides):
            assert side.recv() == ("released", (index, round_index))  # each its own
        assert (relay.messages_up - up, relay.messages_down - down) == (1, 1)
    assert rounds.threads == {"kubeml-ray-rounds-hub"}
    assert (channels.admitted, channels.relayed) == (4, 4)


def test_equal_replies_travel_once_and_each_function_gets_one(plane):
    _, relay, _ = plane
    sides = _functions(plane, Rounds(3, reply=lambda m: "go on"), 3)
    for side in sides:
        side.send("publish")
    assert [side.recv() for side in sides] == ["go on"] * 3
    assert relay.messages_down == 1


def test_groups_do_not_wait_for_each_other(plane):
    rounds_a, rounds_b = Rounds(2), Rounds(1)
    a = _functions(plane, rounds_a, 2, group="a")
    (b,) = _functions(plane, rounds_b, 1, group="b")
    a[0].send("a0")  # a's other function has not published: a's report is held
    b.send("b0")
    assert b.poll(5) and b.recv() == ("released", "b0")
    assert not a[0].poll(0.1)
    a[1].send("a1")
    assert a[0].recv() == ("released", "a0") and a[1].recv() == ("released", "a1")


def test_a_function_that_leaves_lets_the_others_report_go(plane):
    sides = _functions(plane, Rounds(1), 2)
    sides[0].send("publish")
    assert not sides[0].poll(0.1)  # held for its group's other function
    sides[1].close()  # which ended instead (its last round, or it died)
    assert sides[0].poll(5) and sides[0].recv() == ("released", "publish")


def test_a_report_is_held_no_longer_than_the_hold_time(plane, monkeypatch):
    monkeypatch.setattr(node_relay, "HOLD_S", 0.2)
    sides = _functions(plane, Rounds(1), 2)
    start = time.monotonic()
    sides[0].send("publish")  # the other function is slow: its round has not ended
    assert sides[0].poll(5) and sides[0].recv() == ("released", "publish")
    assert 0.15 < time.monotonic() - start < 2.0


def test_a_late_report_goes_up_at_once_once_the_others_have_gone(plane, monkeypatch):
    """The others' reports went up when the hold ran out and they wait for their reply:
    the late one (a cold start, a replacement) completes the node's round, no new hold."""
    monkeypatch.setattr(node_relay, "HOLD_S", 0.3)
    sides = _functions(plane, Rounds(2), 2)
    sides[0].send("early")
    time.sleep(0.6)  # its report went up alone at 0.3 s; the round waits for the other
    start = time.monotonic()
    sides[1].send("late")
    assert sides[1].poll(5) and sides[1].recv() == ("released", "late")
    assert time.monotonic() - start < 0.2  # not held another 0.3 s
    assert sides[0].recv() == ("released", "early")
    for side in sides:  # and the next round is held whole again
        side.send("next")
    assert [side.recv() for side in sides] == [("released", "next")] * 2


def test_a_relay_that_breaks_the_protocol_is_dropped_and_the_hub_goes_on(plane):
    """What a relay sends is not what the control plane reads (another kubeml version?):
    its link ends, its functions' connections with it; direct sockets keep working."""
    from multiprocessing.connection import Connection

    channels = plane[0]
    (side,) = _functions(plane, Rounds(1), 1)
    dropped = threading.Event()
    rogue = socket.create_connection(channels.address)
    rogue.sendall(preamble(channels.offer_link(dropped.set)))
    rogue_link = Connection(rogue.detach())
    rogue_link.send_bytes(b"not a pickle")
    assert dropped.wait(5)
    with pytest.raises((EOFError, OSError)):
        rogue_link.recv_bytes()
    direct = connect(channels.offer(Rounds(1)))
    direct.send(1)
    assert direct.recv() == ("released", 1)
    side.send(2)  # the real relay still answers
    assert side.recv() == ("released", 2)


def test_withdraw_ends_a_relayed_functions_connection(plane):
    channels, relay, _ = plane
    rounds = Rounds(1)
    offer = channels.offer(rounds, "task", via=relay.address)
    side = connect(offer)
    side.send(1)
    assert side.recv() == ("released", 1)
    channels.withdraw(offer)  # its invocation ended or failed
    with pytest.raises((EOFError, OSError)):
        side.recv()
    wait_until(lambda: not relay._conns)


def test_a_token_no_offer_made_is_refused_and_the_others_go_on(plane):
    channels, relay, _ = plane
    (good,) = _functions(plane, Rounds(1), 1, group="a")
    stranger = connect(RoundOffer(relay.address, b"x" * 16, "b"))
    stranger.send("publish")
    with pytest.raises((EOFError, OSError)):
        stranger.recv()
    good.send(2)
    assert good.recv() == ("released", 2)
    assert (channels.admitted, channels.relayed) == (1, 1)


def test_a_relay_that_dies_breaks_its_functions_publish_as_the_backends_fault(plane):
    """Its functions' publish raises BackendError (the job replays their round), the
    control plane hears the relay is gone, and other functions go on directly."""
    from kubeml.backends.relay import Endpoint, PipeTransport
    from kubeml.errors import BackendError
    from kubeml.runtime.sync import RoundReport

    channels, relay, lost = plane
    sides = _functions(plane, Rounds(3), 2)  # the round never completes: no reply comes
    endpoint = Endpoint(transport=None)  # type: ignore[arg-type]  # nothing else is sent
    endpoint.rounds = PipeTransport(sides[0])
    sides[1].send("publish")  # held for the first, which publishes as the relay goes
    threading.Timer(0.2, relay.close).start()
    with pytest.raises(BackendError, match=r"function 3: its round socket .* round 5"):
        endpoint.publish(RoundReport("task", 3, 5, 10, 1.0, 1, False))
    assert lost.wait(5)
    direct = connect(channels.offer(Rounds(1)))
    direct.send(1)
    assert direct.recv() == ("released", 1)
