"""Placement is arithmetic over a snapshot of the nodes: made-up clusters, no Ray call."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from kubeml.backends.ray.placement import cluster_slots, demand, describe_shape, has_room


def test_demand_drops_what_a_function_does_not_need() -> None:
    assert demand((2.0, 0.0), {}) == {"CPU": 2.0}
    assert demand((1.0, 0.5), {"kubeml": 1.0}) == {"CPU": 1.0, "GPU": 0.5, "kubeml": 1.0}


@pytest.mark.parametrize(
    ("nodes", "occupied", "need", "count", "expected"),
    [
        ({"a": {"CPU": 2.0}}, [], {"CPU": 1.0}, 2, True),
        ({"a": {"CPU": 2.0}}, [], {"CPU": 1.0}, 3, False),
        ({"a": {"CPU": 2.0}}, [("a", {"CPU": 1.0})], {"CPU": 1.0}, 2, False),  # one taken
        ({"a": {"CPU": 2.0}}, [("gone", {"CPU": 1.0})], {"CPU": 1.0}, 2, True),  # dead node
        ({"a": {"CPU": 1.5}, "b": {"CPU": 1.5}}, [], {"CPU": 1.0}, 2, True),  # one each
        ({"a": {"CPU": 3.0}, "b": {"CPU": 3.0}}, [], {"CPU": 2.0}, 3, False),  # no split
        ({"a": {"CPU": 8.0}}, [], {"CPU": 1.0, "GPU": 1.0}, 1, False),  # no GPU node
        ({"a": {"CPU": 8.0}, "b": {"CPU": 1.0, "GPU": 1.0}}, [], {"CPU": 1.0, "GPU": 1.0}, 1, True),
        ({}, [], {"CPU": 1.0}, 1, False),  # no live node
        ({"a": {"CPU": 1.0}}, [], {"CPU": 1.0}, 0, True),
    ],
)
def test_room_is_first_fit_over_the_free_resources(nodes, occupied, need, count, expected):
    assert has_room(nodes, occupied, need, count) is expected


def test_room_leaves_the_snapshot_as_it_was() -> None:
    nodes = {"a": {"CPU": 2.0}}
    has_room(nodes, [("a", {"CPU": 1.0})], {"CPU": 1.0}, 1)
    assert nodes == {"a": {"CPU": 2.0}}


@pytest.mark.parametrize(
    ("total", "cpus", "gpus", "expected"),
    [
        ({"CPU": 8.0}, None, 0.0, 8),  # one CPU a function by default
        ({"CPU": 8.0}, 3.0, 0.0, 2),
        ({"CPU": 8.0, "GPU": 2.0}, 1.0, 1.0, 2),  # the GPUs bound it
        ({"CPU": 8.0}, 1.0, 1.0, 1),  # no GPU at all: still at least one
        ({}, None, 0.0, 1),
    ],
)
def test_cluster_slots(total, cpus, gpus, expected) -> None:
    assert cluster_slots(total, cpus, gpus) == expected


def test_describe_shape() -> None:
    assert describe_shape((2.0, 0.0), {}) == "2 CPU"
    assert describe_shape((1.0, 0.5), {"kubeml": 1.0}) == "1 CPU, 0.5 GPU, 1 kubeml"
