"""The Ray backend's direct round sockets, on real sockets in this process."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from kubeml.backends.ray.rounds import RoundChannels, RoundOffer, connect


@pytest.fixture
def channels():
    channels = RoundChannels("127.0.0.1")
    yield channels
    channels.close()


class Echo:
    """An offer's answer: reads each message, records it, and sends it back tagged."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.closed = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, conn) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self.closed.set()
            raise
        self.threads.add(threading.current_thread().name)
        self.got.append(message)
        conn.send(("answered", message))


def test_the_offered_function_connects_and_messages_flow_both_ways(channels):
    echo = Echo()
    function_side = connect(channels.offer(echo))
    assert function_side is not None
    function_side.send(("publish", 1))
    assert function_side.recv() == ("answered", ("publish", 1))
    assert channels.admitted == 1


def test_one_thread_answers_every_connection(channels):
    echoes = [Echo() for _ in range(8)]
    sides = [connect(channels.offer(echo)) for echo in echoes]
    for round_index in range(3):
        for index, side in enumerate(sides):
            side.send((index, round_index))  # all of them publish before any answer is read
        for index, side in enumerate(sides):
            assert side.recv() == ("answered", (index, round_index))
    names = set().union(*(echo.threads for echo in echoes))
    assert names == {"kubeml-ray-rounds-hub"}


def test_a_wrong_token_is_closed_unread_and_the_offer_still_waits(channels):
    echo = Echo()
    offer = channels.offer(echo)
    stranger = connect(RoundOffer(offer.address, b"x" * len(offer.token)))
    assert stranger is not None
    with pytest.raises(EOFError):
        stranger.recv()  # closed by the control plane
    assert channels.admitted == 0
    rightful = connect(offer)
    rightful.send("hello")
    assert rightful.recv() == ("answered", "hello")


def test_a_silent_connection_is_dropped_and_blocks_no_one(channels, monkeypatch):
    monkeypatch.setattr("kubeml.backends.ray.rounds._CONNECT_TIMEOUT_S", 0.2)
    silent = socket.create_connection(channels.address)  # never sends a token
    function_side = connect(channels.offer(Echo()))
    function_side.send(1)
    assert function_side.recv() == ("answered", 1)
    silent.settimeout(5)
    assert silent.recv(1) == b""  # dropped after the timeout
    silent.close()


def test_withdraw_ends_the_connection_on_both_sides(channels):
    echo = Echo()
    offer = channels.offer(echo)
    function_side = connect(offer)
    function_side.send(1)
    assert function_side.recv() == ("answered", 1)
    channels.withdraw(offer)  # the invocation ended while its function still holds on
    assert echo.closed.wait(5)  # the hub read the end and let the connection go
    with pytest.raises((EOFError, OSError)):
        function_side.recv()


def test_an_answer_that_fails_closes_only_its_connection(channels):
    def broken(conn) -> None:
        conn.recv()
        raise RuntimeError("the barrier refused it")

    bad, good = connect(channels.offer(broken)), connect(channels.offer(Echo()))
    bad.send(1)
    with pytest.raises((EOFError, OSError)):
        bad.recv()
    good.send(2)
    assert good.recv() == ("answered", 2)


def test_an_offer_withdrawn_before_it_is_taken_up_is_refused(channels):
    offer = channels.offer(Echo())
    channels.withdraw(offer)
    late = connect(offer)
    assert late is not None
    with pytest.raises(EOFError):
        late.recv()
    assert channels.admitted == 0


def test_an_unreachable_control_plane_leaves_the_rounds_to_ray():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()[:2]
    assert connect(RoundOffer(address, b"t" * 16)) is None  # nothing listens there now


def test_a_reply_after_the_end_raises_instead_of_writing(channels):
    """A round's releases come from the merging thread: one for a function whose
    connection has ended must fail, never write to a closed (or reused) descriptor."""
    held = []

    def hold(sock) -> None:
        held.append((sock, sock.recv()))

    offer = channels.offer(hold)
    function_side = connect(offer)
    function_side.send("publish")
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        time.sleep(0.01)
    sock, message = held[0]
    assert message == "publish"
    sock.send("released")  # answered from another thread than the hub's
    assert function_side.recv() == "released"
    channels.withdraw(offer)
    with pytest.raises(OSError):
        sock.send("too late")


def test_a_broken_round_socket_fails_the_publish_as_the_backends_fault(channels):
    """The connection breaking is not the user's code failing: the publish raises a
    BackendError (the job replays the round), never an error that fails the task."""
    from kubeml.backends.relay import Endpoint, PipeTransport
    from kubeml.errors import BackendError
    from kubeml.runtime.sync import RoundReport

    offers = []

    def drop(sock) -> None:
        sock.recv()
        channels.withdraw(offers[0])  # the report arrived, then the connection broke
        raise EOFError

    offers.append(channels.offer(drop))
    endpoint = Endpoint(transport=None)  # type: ignore[arg-type]  # nothing else is sent
    endpoint.rounds = PipeTransport(connect(offers[0]))
    with pytest.raises(BackendError, match=r"function 3: its round socket .* round 5"):
        endpoint.publish(RoundReport("t", 3, 5, 10, 1.0, 1, False))


def test_equal_releases_and_unhashable_messages_arrive_as_sent(channels):
    """A round's releases are equal messages, pickled once; each still arrives as sent,
    and a message that cannot be hashed (so is not reused) too."""
    from kubeml.backends.relay import Released
    from kubeml.runtime.sync import Release

    replies = [
        Released(Release(proceed=True)),
        Released(Release(proceed=False)),
        Released(Release(proceed=True, threads=3)),
        Released(Release(proceed=True)),
        ["not hashable", {"a": 1}],
    ]
    pending = list(replies)

    def answer(conn) -> None:
        conn.recv()
        conn.send(pending.pop(0))

    side = connect(channels.offer(answer))
    assert side is not None
    for expected in replies:
        side.send("publish")
        assert side.recv() == expected
