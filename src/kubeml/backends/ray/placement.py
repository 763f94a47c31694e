"""Where Ray functions fit: arithmetic over a snapshot of the live nodes' resources.

Pure functions of their arguments (no Ray call), tested with made-up clusters; the few
lines that ask Ray for the snapshot are in `kubeml.backends.ray.cluster`.
"""

from __future__ import annotations

from collections.abc import Iterable

Shape = tuple[float, float]  # (CPUs, GPUs) an actor reserves
Resources = dict[str, float]  # a node's (or a function's) resources by name: CPU, GPU, ...


def demand(shape: Shape, resources: Resources) -> Resources:
    """What one function of `shape` reserves, with the custom `resources` every one needs."""
    need = {"CPU": shape[0], "GPU": shape[1], **resources}
    return {name: amount for name, amount in need.items() if amount > 0}


def has_room(
    nodes: dict[str, Resources],
    occupied: Iterable[tuple[str, Resources]],
    need: Resources,
    count: int,
) -> bool:
    """Whether the live `nodes` (node id -> resources) hold `count` more functions that
    each `need` so much, beside the `occupied` ones (node id, what it reserves); placed
    first-fit, as a node at a time fills up."""
    free = {node: dict(resources) for node, resources in nodes.items()}
    for node, held in occupied:
        if node in free:
            _take(free[node], held)
    for _ in range(count):
        fit = next((resources for resources in free.values() if _fits(resources, need)), None)
        if fit is None:
            return False
        _take(fit, need)
    return True


def slot_cpus(
    nodes: list[Resources],
    capacity: int,
    gpus_per_function: float = 0.0,
    resources_per_function: Resources | None = None,
) -> float:
    """The CPUs a function reserves by default: the largest whole count s for which the
    live `nodes` (their resources) hold `capacity` functions of s CPUs, each with its GPUs
    and custom resources, so every function the scheduler admits can be placed; 1 when
    not even that holds them all (a capacity above the cluster: an autoscaling one)."""
    resources = resources_per_function or {}

    def holds(node: Resources, cpus: int) -> int:
        count = int(node.get("CPU", 0.0) // cpus)
        if gpus_per_function:
            count = min(count, int(node.get("GPU", 0.0) // gpus_per_function))
        for name, amount in resources.items():
            count = min(count, int(node.get(name, 0.0) // amount))
        return count

    best, largest = 1, int(max((n.get("CPU", 0.0) for n in nodes), default=0.0))
    for cpus in range(2, largest + 1):  # fewer functions fit as each takes more
        if sum(holds(node, cpus) for node in nodes) < capacity:
            break
        best = cpus
    return float(best)


def cluster_slots(
    total: Resources, cpus_per_function: float | None, gpus_per_function: float
) -> int:
    """How many functions the cluster's `total` resources hold at once (at least 1)."""
    slots = total.get("CPU", 0.0) / (cpus_per_function or 1.0)
    if gpus_per_function:
        slots = min(slots, total.get("GPU", 0.0) / gpus_per_function)
    return max(1, int(slots))


def describe_shape(shape: Shape, resources: Resources) -> str:
    """What a function reserves, for messages: '2 CPU, 1 GPU, 1 kubeml'."""
    parts = [f"{shape[0]:g} CPU"] + ([f"{shape[1]:g} GPU"] if shape[1] else [])
    parts += [f"{v:g} {k}" for k, v in resources.items()]
    return ", ".join(parts)


def _fits(free: Resources, need: Resources) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _take(free: Resources, need: Resources) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v
