"""Node relays on a local Ray cluster whose one worker node runs both functions of a task
(2 CPUs, two `kubeml` slots) beside a head with no CPUs, the control plane's node. The
tasks are sharded (one shard server, on that node), as they are by default on a cluster
of several nodes: only then do a round's messages carry no weights.

Two functions of a task on one node send their rounds through that node's relay (one
message a round each way between the node and the control plane): the task trains the
same bits as with direct sockets, and a relay SIGKILLed mid-epoch costs the round in
flight, not the task, and no bit of the result; a new relay takes its place.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from kubeml.api.schemas import TaskState
from tests.integration.conftest import ray_cluster, wait_for
from tests.integration.test_ray_shards import STATELESS_MLP, _mid_epoch_2, _same, _weights
from tests.integration.test_recovery import TASK as CENTRAL

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = pytest.mark.ray

SLOTS = {"kubeml": 2.0}
TASK = CENTRAL | {"shards": 1}


@pytest.fixture(scope="module")
def one_node() -> Iterator[Any]:
    yield from ray_cluster([(2, SLOTS)])


@pytest.fixture(scope="module")
def engine(one_node: Any, tmp_path_factory, digits) -> Iterator[Any]:
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    home = tmp_path_factory.mktemp("relay") / "home"
    settings = Settings(
        home=home, backend="ray", capacity=2, round_timeout_s=60, ray_relay_min_functions=2
    )
    backend = RayBackend.from_settings(settings, resources_per_function={"kubeml": 1.0})
    with Engine(settings, backend=backend) as engine:
        engine.create_function("mlp", STATELESS_MLP)
        engine.create_dataset(
            "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
        )
        yield engine


@pytest.fixture(scope="module")
def direct_weights(engine: Any) -> dict[str, Any]:
    """The final weights of the task with no relay (each function connects directly)."""
    engine.backend._relays.min_functions = 0
    try:
        info = engine.wait(engine.train(**TASK), 120)
    finally:
        engine.backend._relays.min_functions = 2
    assert info.state is TaskState.SUCCEEDED, info.error
    assert engine.backend.describe()["relayed_round_sockets"] == 0
    return _weights(engine, info.id)


def _relay_up(engine: Any) -> dict[str, int]:
    """Start the node's relay (the first gang on a node does, then connects directly)."""
    relays = engine.backend._relays
    (node,) = {w["node_id"] for w in engine.backend.describe()["workers"]}
    wait_for(lambda: relays.address(node, 2) is not None, 60)
    return relays.describe()


def test_a_nodes_functions_go_through_its_relay_and_train_the_same_bits(engine, direct_weights):
    relays = _relay_up(engine)
    before = engine.backend.describe()["relayed_round_sockets"]
    info = engine.wait(engine.train(**TASK), 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert engine.backend.describe()["relayed_round_sockets"] - before == 2 * 4  # 2 a epoch
    assert engine.backend.describe()["node_relays"] == relays  # the same relay throughout
    epochs = engine.get_history(info.id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss * 0.7
    assert info.accuracy > 85.0
    assert _same(_weights(engine, info.id), direct_weights)


@pytest.mark.slow
def test_a_killed_relay_costs_a_round_and_no_bit(engine, direct_weights):
    (pid,) = _relay_up(engine).values()
    task_id = engine.train(**TASK)
    wait_for(lambda: _mid_epoch_2(engine, task_id), 60)
    os.kill(pid, signal.SIGKILL)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert info.failures >= 1 and info.retries == info.failures, (info.failures, info.retries)
    logs = "\n".join(line.message for line in engine.logs_of(task_id))
    assert "round socket to the control plane broke" in logs and "replaying round" in logs, logs
    assert _same(_weights(engine, task_id), direct_weights)
    # The next gang on the node started a new relay, which later epochs use.
    wait_for(lambda: engine.backend.describe()["node_relays"], 60)
    assert pid not in engine.backend.describe()["node_relays"].values()
