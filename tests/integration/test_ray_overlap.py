"""Overlapped rounds (`overlap`) on the sharded path of a local two-node Ray cluster: each
round's sync (deposit, merge, update) runs beside the next round's steps. The task trains
as well as with rounds that wait, every sample is merged once per epoch, and no bit
depends on when a sync lands (two runs agree); a function SIGKILLed with a round in
flight is replayed, and a resize drops the round the functions trained ahead."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import function_source
from tests.integration import test_ray_shards as shards
from tests.integration.conftest import kept_at_epoch_starts
from tests.integration.test_ray_shards import _log, _same, _weights
from tests.integration.test_recovery import TASK

pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = pytest.mark.ray

engine = shards.engine  # the sharded tests' engine, on this module's cluster

OVERLAPPED: dict[str, Any] = {**TASK, "shards": 2, "overlap": True}


def _overlapped_s(engine: Any, task_id: str) -> list[float]:
    """Each epoch's mean seconds of a round's sync spent beside the next round's steps."""
    return [float(x) for x in re.findall(r"overlapped (\S+) s", _log(engine, task_id))]


def test_overlapped_rounds_train_as_well_and_land_the_same_bits(engine):
    first = engine.wait(engine.train(**OVERLAPPED), 120)
    assert first.state is TaskState.SUCCEEDED, first.error
    epochs = engine.get_history(first.id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss * 0.7
    assert first.accuracy > 85.0
    assert all(e.samples == 1497 for e in epochs)  # every sample once per epoch
    overlapped = _overlapped_s(engine, first.id)
    assert len(overlapped) == 4 and all(s > 0 for s in overlapped), overlapped

    again = engine.wait(engine.train(**OVERLAPPED), 120)
    assert again.state is TaskState.SUCCEEDED, again.error
    assert _same(_weights(engine, first.id), _weights(engine, again.id))
    waiting = engine.wait(engine.train(**{**OVERLAPPED, "overlap": False}), 120)
    assert waiting.state is TaskState.SUCCEEDED, waiting.error
    assert _overlapped_s(engine, waiting.id) == [0.0] * 4
    # The outer step reaches each function a round late: other weights, as good a model.
    assert not _same(_weights(engine, first.id), _weights(engine, waiting.id))
    assert abs(first.accuracy - waiting.accuracy) < 5.0


def test_an_overlapped_lanes_next_epoch_goes_on_with_its_momentum(engine):
    """The optimizer state stays on the actor that trained the lane, which trains its next
    epoch (the other tests here train plain SGD, which keeps none)."""
    engine.create_function("mlp-momentum", function_source(SLEEP_PER_BATCH_S=0.01))
    info = engine.wait(engine.train(**{**OVERLAPPED, "function": "mlp-momentum", "epochs": 3}), 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert kept_at_epoch_starts(engine, info.id) == {1: [0, 0], 2: [6, 6], 3: [6, 6]}


def test_a_function_killed_with_a_round_in_flight_is_replayed(engine):
    info = shards.kill_a_function_mid_epoch(engine, OVERLAPPED)
    epochs = engine.get_history(info.id).epochs
    assert all(e.samples == 1497 for e in epochs)
    assert info.accuracy > 85.0


def test_a_resize_drops_the_round_trained_ahead_and_merges_every_sample_once(engine):
    shards.shrink_mid_epoch(engine, {**OVERLAPPED, "epochs": 2})
