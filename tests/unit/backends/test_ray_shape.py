"""The CPUs a Ray function reserves by default: what lets every admitted function fit."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from kubeml.backends.ray.placement import slot_cpus


@pytest.mark.parametrize(
    ("nodes", "capacity", "gpus", "resources", "expected"),
    [
        ([{"CPU": 2.0}], 2, 0.0, None, 1.0),  # the local Ray: one CPU a slot
        ([{"CPU": 16.0}], 2, 0.0, None, 8.0),  # two slots on one big node
        ([{"CPU": 0.0}, {"CPU": 4.0}, {"CPU": 4.0}], 2, 0.0, None, 4.0),  # a CPU-less head
        ([{"CPU": 3.0}, {"CPU": 3.0}], 3, 0.0, None, 1.0),  # 2 CPUs each: only 2 would fit
        ([{"CPU": 2.0}], 10, 0.0, None, 1.0),  # a capacity above the cluster (autoscaling)
        ([{"CPU": 16.0}, {"CPU": 8.0, "GPU": 1.0}], 1, 1.0, None, 8.0),  # on the GPU node
        ([{"CPU": 8.0, "kubeml": 1.0}, {"CPU": 32.0}], 1, 0.0, {"kubeml": 1.0}, 8.0),
        ([], 2, 0.0, None, 1.0),  # no live node yet
    ],
)
def test_every_function_the_scheduler_admits_can_be_placed(
    nodes, capacity, gpus, resources, expected
) -> None:
    cpus = slot_cpus(nodes, capacity, gpus, resources)
    assert cpus == expected

    def placed(node: dict[str, float]) -> int:
        fits = int(node.get("CPU", 0.0) // cpus)
        if gpus:
            fits = min(fits, int(node.get("GPU", 0.0) // gpus))
        for name, amount in (resources or {}).items():
            fits = min(fits, int(node.get(name, 0.0) // amount))
        return fits

    if cpus > 1:  # then the cluster holds the capacity, and one more CPU each would not
        assert sum(placed(n) for n in nodes) >= capacity
