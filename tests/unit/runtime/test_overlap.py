"""`InFlight`: a round's sync in its own thread, as the function's thread sees it."""

from __future__ import annotations

import threading

import pytest

from kubeml.errors import BackendError
from kubeml.runtime.overlap import InFlight
from kubeml.runtime.sync import Release, RoundReport


class Weights:
    """Records what the sync's thread does with the weights."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin(self) -> None: ...

    def rebase(self, state) -> None: ...

    def deposit(self) -> str:
        self.calls.append("deposit")
        return "token"

    def catch_up(self) -> bool:
        self.calls.append("catch_up")
        return True


class Channel:
    """A release that comes when the test says so."""

    def __init__(self, release: Release | Exception) -> None:
        self.release, self.go = release, threading.Event()
        self.reports: list[RoundReport] = []

    def publish(self, report: RoundReport) -> Release:
        self.reports.append(report)
        self.go.wait(10)
        if isinstance(self.release, Exception):
            raise self.release
        return self.release

    def progress(self, func_id: int) -> None: ...


REPORT = RoundReport("t", 1, 4, samples=64, loss_sum=1.0, batches=4, final=False)


def test_the_report_carries_the_deposit_and_the_model_catches_up_after_the_release():
    weights, channel = Weights(), Channel(Release(proceed=True, threads=2))
    flight = InFlight(weights, channel, REPORT)
    assert not flight.halted()  # no release yet: the function trains on
    channel.go.set()
    assert flight.wait() == Release(proceed=True, threads=2)
    assert weights.calls == ["deposit", "catch_up"]
    assert channel.reports == [RoundReport("t", 1, 4, 64, 1.0, 4, False, "token")]
    assert not flight.halted() and flight.seconds > 0


def test_a_release_that_stops_halts_the_next_round_and_brings_no_model():
    weights, channel = Weights(), Channel(Release(proceed=False))
    channel.go.set()
    flight = InFlight(weights, channel, REPORT)
    assert flight.wait() == Release(proceed=False)
    assert flight.halted()
    assert weights.calls == ["deposit"]  # the function returns: nothing to catch up with


def test_a_broken_sync_halts_the_round_and_raises_on_the_functions_thread():
    channel = Channel(BackendError("its round socket broke"))
    channel.go.set()
    flight = InFlight(Weights(), channel, REPORT)
    with pytest.raises(BackendError, match="round socket broke"):
        flight.wait()
    assert flight.halted()


def test_an_abandoned_sync_leaves_the_weights_alone():
    weights, channel = Weights(), Channel(Release(proceed=True))
    flight = InFlight(weights, channel, REPORT)
    flight.abandon()  # the function failed while the release was on its way
    channel.go.set()
    flight._done.wait(10)
    assert weights.calls == ["deposit"]
