"""Ray start-up, and the few calls that ask Ray what its cluster holds (the snapshot that
`kubeml.backends.ray.placement` does its arithmetic on)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from kubeml.backends.ray.placement import Resources
from kubeml.backends.ray.stores import INLINE_BYTES

if TYPE_CHECKING:
    from kubeml.settings import Settings

# What kubeml sets on a Ray it starts itself (a cluster someone else started keeps its own;
# docs/cluster.md says how to set the same there):
# - `worker_niceness` 0: Ray starts its workers at nice 15, so that its raylet wins the
#   CPU. A function actor is the work here, and at nice 15 it lost its core to every nice-0
#   thread: the control plane's merge each round, or any other program on the machine
#   (the process backend's workers run at nice 0).
# - `max_direct_call_object_size`: a round's weights up to `INLINE_BYTES` travel inside
#   the RPC that carries the relay's message instead of through the object store (Ray's
#   default cut-off is 100 KiB; a 244 KB LeNet-5 message took 1.9 ms that way, 1.1 ms inline).
LOCAL_RAY_CONFIG: dict[str, Any] = {
    "worker_niceness": 0,
    "max_direct_call_object_size": INLINE_BYTES + 2**16,  # the weights and their message
}


def start(settings: Settings) -> bool:
    """Connect to `settings.ray_address`, or start a local Ray; a Ray already initialised
    in this process (a test's cluster) is used as it is. Returns whether this call started
    it (its owner shuts it down)."""
    if ray.is_initialized():
        return False
    ray.init(
        address=settings.ray_address or "local",
        namespace="kubeml",
        include_dashboard=False,
        num_cpus=None if settings.ray_address else settings.capacity,
        _system_config=None if settings.ray_address else LOCAL_RAY_CONFIG,
    )
    return True


def running() -> bool:
    return ray.is_initialized()


def stop() -> None:
    ray.shutdown()


def live_nodes() -> dict[str, Resources]:
    """Each live node's resources, by node id."""
    return {n["NodeID"]: dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")}


def total() -> Resources:
    """The resources of the whole cluster."""
    return dict(ray.cluster_resources())


def free() -> str:
    """The cluster's free CPUs and GPUs, for messages."""
    available = ray.available_resources()
    return ", ".join(f"{available.get(k, 0.0):g} {k}" for k in ("CPU", "GPU")) or "nothing"


def node_address() -> str:
    """The address Ray knows this node by."""
    return str(ray.util.get_node_ip_address())
