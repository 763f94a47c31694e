"""The Ray backend's direct round sockets, on real sockets in this process."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import CancelledError

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from kubeml.backends.ray.rounds import RoundChannels, RoundOffer, connect


@pytest.fixture
def channels():
    channels = RoundChannels("127.0.0.1")
    yield channels
    channels.close()


def test_the_offered_function_connects_and_messages_flow_both_ways(channels):
    offer, arrival = channels.offer()
    function_side = connect(offer)
    assert function_side is not None
    control_side = arrival.result(timeout=5)
    function_side.send(("publish", 1))
    assert control_side.recv() == ("publish", 1)
    control_side.send(("released", 1))
    assert function_side.recv() == ("released", 1)


def test_a_wrong_token_is_closed_unread_and_the_offer_still_waits(channels):
    offer, arrival = channels.offer()
    stranger = connect(RoundOffer(offer.address, b"x" * len(offer.token)))
    assert stranger is not None
    with pytest.raises(EOFError):
        stranger.recv()  # closed by the control plane
    assert not arrival.done()
    assert connect(offer) is not None and arrival.result(timeout=5) is not None


def test_a_silent_connection_is_dropped_and_blocks_no_one(channels, monkeypatch):
    monkeypatch.setattr("kubeml.backends.ray.rounds._CONNECT_TIMEOUT_S", 0.2)
    silent = socket.create_connection(channels.address)  # never sends a token
    offer, arrival = channels.offer()
    assert connect(offer) is not None and arrival.result(timeout=5) is not None
    silent.settimeout(5)
    assert silent.recv(1) == b""  # dropped after the timeout
    silent.close()


def test_withdraw_wakes_the_control_side_blocked_reading(channels):
    offer, arrival = channels.offer()
    function_side = connect(offer)
    control_side = arrival.result(timeout=5)
    woke: list[BaseException] = []

    def read() -> None:
        try:
            control_side.recv()
        except (EOFError, OSError) as exc:
            woke.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    channels.withdraw(offer)  # the invocation ended while its function still holds on
    reader.join(timeout=5)
    assert not reader.is_alive() and woke
    assert function_side is not None
    with pytest.raises((EOFError, OSError)):
        function_side.recv()


def test_an_offer_withdrawn_before_it_is_taken_up_is_refused(channels):
    offer, arrival = channels.offer()
    channels.withdraw(offer)
    with pytest.raises(CancelledError):
        arrival.result(timeout=5)
    late = connect(offer)
    assert late is not None
    with pytest.raises(EOFError):
        late.recv()


def test_an_unreachable_control_plane_leaves_the_rounds_to_ray():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()[:2]
    assert connect(RoundOffer(address, b"t" * 16)) is None  # nothing listens there now
