"""Parallelism policies, driven by scripted epoch records."""

import math

import pytest

from kubeml.api.schemas import EpochRecord
from kubeml.control.tasks.policy import (
    GoodputPolicy,
    StaticPolicy,
    ThroughputPolicy,
    policy_for,
)

SAMPLES = 60_000


def _record(epoch: int, n: int, rate: float, loss: float = 1.0) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=loss,
        parallelism=n,
        epoch_duration_s=SAMPLES / rate,
        samples_per_s=rate,
        rounds=1,
    )


def _drive(policy, n: int, rate_at, loss_at=lambda epoch, n: 1.0, epochs=8, capacity=4):
    """Run `policy` for `epochs` epochs on a simulated task; returns the N of every epoch."""
    seen = []
    for epoch in range(1, epochs + 1):
        seen.append(n)
        n = policy.next_parallelism(_record(epoch, n, rate_at(n), loss_at(epoch, n)), capacity)
        assert 1 <= n <= capacity
    return seen


def test_static_policy_never_changes_parallelism():
    assert StaticPolicy().next_parallelism(_record(1, 3, 100.0), capacity=8) == 3
    assert _drive(StaticPolicy(), 2, lambda n: 100.0 * n) == [2] * 8


def test_throughput_policy_ignores_the_warm_up_epoch():
    policy = ThroughputPolicy()
    # a slow first epoch (cold workers) is not the reference: N stays to be measured
    assert policy.next_parallelism(_record(1, 2, 10.0), capacity=4) == 2
    assert policy.rates == {}
    assert policy.next_parallelism(_record(2, 2, 100.0), capacity=4) == 3


def test_throughput_policy_climbs_to_the_fastest_n_and_stays():
    rates = {1: 100.0, 2: 180.0, 3: 200.0, 4: 150.0}
    seen = _drive(ThroughputPolicy(), 1, rates.__getitem__, epochs=8)
    assert seen == [1, 1, 2, 3, 4, 3, 3, 3]


def test_throughput_policy_shrinks_at_capacity_when_the_machine_gets_busy():
    rates = {1: 100.0, 2: 190.0}
    policy = ThroughputPolicy()
    assert _drive(policy, 1, rates.__getitem__, epochs=4, capacity=2) == [1, 1, 2, 2]
    busy = {1: 100.0, 2: 60.0}  # a neighbour took a core: two functions now lose
    seen = _drive(policy, 2, busy.__getitem__, epochs=4, capacity=2)
    assert seen[-1] == 1, seen  # the 2021 policy could only grow from here


def test_throughput_policy_follows_a_smaller_capacity():
    policy = ThroughputPolicy()
    policy.next_parallelism(_record(1, 4, 100.0), capacity=4)
    assert policy.next_parallelism(_record(2, 4, 100.0), capacity=2) == 2


def _loss_curve(efficiency: dict[int, float], decay: float = 0.6):
    """Training loss whose log falls by `efficiency[N] * decay**epoch` per sample."""
    state = {"log_loss": 0.0, "epoch": 0}

    def loss_at(epoch: int, n: int) -> float:
        if epoch > state["epoch"]:
            state["log_loss"] -= efficiency[n] * decay**epoch
            state["epoch"] = epoch
        return math.exp(state["log_loss"])

    return loss_at


def test_goodput_prefers_statistical_efficiency_over_raw_throughput():
    # 2 functions are 1.6x faster, but each sample does only 0.4x the progress:
    # goodput is 0.64x, so N=1 wins although the throughput policy would pick N=2.
    rates = {1: 100.0, 2: 160.0}
    loss = _loss_curve({1: 1.0, 2: 0.4})
    seen = _drive(GoodputPolicy(), 1, rates.__getitem__, loss, epochs=7, capacity=2)
    assert seen[:4] == [1, 1, 2, 1]
    assert seen[-1] == 1
    assert _drive(ThroughputPolicy(), 1, rates.__getitem__, epochs=7, capacity=2)[-1] == 2


def test_goodput_grows_when_efficiency_holds_and_removes_the_trend():
    rates = {1: 100.0, 2: 190.0, 3: 270.0, 4: 300.0}
    loss = _loss_curve({1: 1.0, 2: 0.95, 3: 0.9, 4: 0.5}, decay=0.5)
    policy = GoodputPolicy()
    seen = _drive(policy, 1, rates.__getitem__, loss, epochs=9, capacity=4)
    assert seen[:4] == [1, 1, 2, 3]  # progress halves every epoch, and it still climbs
    assert seen[-1] == 3, seen  # N=4 is faster but its samples do half the work
    assert policy.decay() == pytest.approx(0.5, rel=0.05)
    eff = policy.efficiency()
    assert eff[3] / eff[1] == pytest.approx(0.9, rel=0.05)


def test_goodput_never_exceeds_capacity_and_survives_a_rising_loss():
    policy = GoodputPolicy()
    seen = _drive(
        policy, 2, lambda n: 100.0 * n, lambda epoch, n: 1.0 + epoch, epochs=5, capacity=2
    )
    assert seen == [2] * 5  # no progress measured: nothing to decide on, nothing breaks


def test_policy_for_names_every_policy_and_rejects_others():
    assert isinstance(policy_for("static"), StaticPolicy)
    assert isinstance(policy_for("throughput"), ThroughputPolicy)
    assert isinstance(policy_for("goodput"), GoodputPolicy)
    with pytest.raises(ValueError, match="policy must be one of"):
        policy_for("pollux")
