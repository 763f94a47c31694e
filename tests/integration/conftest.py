"""Fixtures of the integration tests that start a real server process."""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeml.client import stop_server
from kubeml.procs import children
from kubeml.settings import Settings
from tests.conftest import free_port

RAY_NODE_RESOURCES = {"kubeml": 1.0}  # one function slot on each worker node
MB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local multi-node Ray cluster (`ray.cluster_utils.Cluster`) for a test module: a
    head with no CPUs (the control plane's node) and two 1-CPU worker nodes with one
    `kubeml` slot each, so the two functions of a task land on different nodes."""
    yield from ray_cluster([(1, RAY_NODE_RESOURCES)] * 2)


def ray_cluster(workers: list[tuple[int, dict[str, float]]]) -> Iterator[Any]:
    """A local Ray cluster, connected to: a head with no CPUs, and a worker node of
    (CPUs, custom resources) for each of `workers`."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * MB},
    )
    try:
        for cpus, resources in workers:
            cluster.add_node(num_cpus=cpus, resources=resources, object_store_memory=80 * MB)
        ray.init(address=cluster.address, namespace="kubeml-tests")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings of a local server on a free port and a fresh home; stopped at the end."""
    local = Settings(
        home=tmp_path / "home", host="127.0.0.1", port=free_port(), backend="inline",
        capacity=2, shm_dir=tmp_path / "shm", api_token=None, url=None,
    )  # fmt: skip
    try:
        yield local
    finally:
        stop_server(local, timeout_s=30)


def worker_pids() -> set[int]:
    """This process's live process-backend workers, read from /proc."""
    return set(children(os.getpid(), "process_worker"))


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll `condition` until it holds or `timeout_s` passed; its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def wait_for(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """`wait_until`, failing the test when `condition` never held."""
    assert wait_until(condition, timeout_s), "condition not met in time"


def kept_at_epoch_starts(engine: Any, task_id: str) -> dict[int, list[int]]:
    """Epoch -> the momentum buffers each function's first batch of it started with, as
    tests/functions/digits_mlp.py logs them (6: every parameter's; 0: a fresh optimizer)."""
    kept: dict[int, list[int]] = defaultdict(list)
    for line in engine.logs_of(task_id):
        found = re.search(r"first batch of epoch (\d+): loss \S+, (\d+) kept states", line.message)
        if found:
            kept[int(found[1])].append(int(found[2]))
    return {epoch: sorted(counts) for epoch, counts in kept.items()}
