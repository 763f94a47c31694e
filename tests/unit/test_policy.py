"""Parallelism policies."""

from kubeml.control.policy import StaticPolicy, ThroughputPolicy


def test_static_policy_never_changes_parallelism():
    assert StaticPolicy().next_parallelism(3, 10.0, capacity=8) == 3


def test_throughput_policy_follows_the_2021_rules():
    policy = ThroughputPolicy()
    assert policy.next_parallelism(2, 10.0, capacity=8) == 3  # first epoch: try more
    assert policy.next_parallelism(3, 10.4, capacity=8) == 4  # <= 1.05x: scale up
    assert policy.next_parallelism(4, 11.0, capacity=8) == 4  # between: keep
    assert policy.next_parallelism(4, 12.5, capacity=8) == 3  # >= 1.2x: scale down


def test_throughput_policy_stays_within_one_and_capacity():
    policy = ThroughputPolicy()
    assert policy.next_parallelism(2, 1.0, capacity=2) == 2
    assert policy.next_parallelism(2, 1.0, capacity=2) == 2
    shrinking = ThroughputPolicy()
    shrinking.next_parallelism(1, 1.0, capacity=4)
    assert shrinking.next_parallelism(1, 5.0, capacity=4) == 1
