"""The ray backend on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`).

The head node has no CPUs, so functions run only on the two worker nodes; each worker
node has one CPU and one `kubeml` slot, so the two functions of a task land on different
nodes. Nothing is shared with the functions but the object store: datasets, weights and
the function's code reach them by object ref or inside the invocation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import ROOT, function_source
from tests.integration.conftest import MB, RAY_NODE_RESOURCES, kept_at_epoch_starts, wait_for
from tests.integration.test_epoch_validation import _invocations, _score
from tests.integration.test_recovery import TASK, add_mlp_and_digits

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = pytest.mark.ray

NODE_RESOURCES = RAY_NODE_RESOURCES


@pytest.fixture
def ray_engine(cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    monkeypatch.delenv("KUBEML_CAPACITY", raising=False)  # capacity comes from the cluster
    settings = Settings(home=tmp_path / "ray-home", backend="ray", round_timeout_s=60)
    backend = RayBackend.from_settings(settings, resources_per_function=NODE_RESOURCES)
    engine = Engine(settings, backend=backend)
    try:
        yield engine
    finally:
        engine.close()


def _add_digits(engine: Any, digits: dict[str, np.ndarray]) -> None:
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )


def _nodes_of(engine: Any, task_id: str) -> set[str]:
    workers = engine.backend.describe()["workers"]
    return {w["node_id"] for w in workers if task_id in (w["task_id"], w["last_task_id"])}


def test_capacity_comes_from_the_cluster(ray_engine):
    assert ray_engine.backend.capacity == 2  # two 1-CPU worker nodes; the head has none
    assert ray_engine.backend.cores() == 2  # the policy's cap: the cluster's CPUs


def test_lenet_on_two_nodes_matches_the_process_backend(ray_engine, make_engine, mnist_5k):
    """The seed's LeNet, same data and seed: the same accuracy as on worker processes."""
    data = {
        "train_x": mnist_5k["train_x"][:2048],
        "train_y": mnist_5k["train_y"][:2048],
        "test_x": mnist_5k["test_x"][:400],
        "test_y": mnist_5k["test_y"][:400],
    }
    request = dict(function="lenet", dataset="mnist", epochs=3, parallelism=2, k=4, lr=0.02)
    request |= dict(static=True, seed=7)
    results = {}
    for name, engine in (("ray", ray_engine), ("process", make_engine("process"))):
        engine.create_function("lenet", (ROOT / "examples" / "lenet_mnist.py").read_text())
        engine.create_dataset("mnist", *data.values())
        task_id = engine.train(**request)
        info = engine.wait(task_id, timeout_s=180)
        assert info.state is TaskState.SUCCEEDED, info.traceback
        history = engine.get_history(task_id).epochs
        predictions = engine.infer(task_id, data["test_x"][:40].tolist())
        results[name] = (task_id, info, history, predictions)

    ray_task, ray_info, ray_epochs, ray_predictions = results["ray"]
    _, process_info, process_epochs, process_predictions = results["process"]
    assert len(_nodes_of(ray_engine, ray_task)) == 2, "the two functions shared a node"
    assert [e.rounds for e in ray_epochs] == [e.rounds for e in process_epochs] == [4, 4, 4]
    assert ray_epochs[-1].train_loss < ray_epochs[0].train_loss
    assert ray_info.accuracy > 80.0
    assert abs(ray_info.accuracy - process_info.accuracy) <= 1.0
    assert abs(ray_epochs[-1].train_loss - process_epochs[-1].train_loss) < 0.02
    agree = sum(int(a == b) for a, b in zip(ray_predictions, process_predictions, strict=True))
    assert agree >= 38


def test_user_exception_fails_the_task_with_the_users_traceback(ray_engine, digits):
    """The backend contract (tests/contract/test_backends.py), on the ray backend."""
    _add_digits(ray_engine, digits)
    ray_engine.create_function("mlp", function_source(FAIL_AT_BATCH=2))
    info = ray_engine.wait(ray_engine.train(function="mlp", dataset="digits", epochs=2), 60)
    assert info.state is TaskState.FAILED
    assert "raised ValueError: user code exploded on purpose" in info.error
    assert "in _step" in info.traceback and "user code exploded" in info.traceback


def test_user_output_reaches_the_task_log_and_momentum_the_next_epoch(ray_engine, digits):
    """Each lane's next epoch runs on the actor that trained it, which kept its optimizer."""
    _add_digits(ray_engine, digits)
    ray_engine.create_function("mlp", function_source())
    task_id = ray_engine.train(
        function="mlp", dataset="digits", epochs=3, lr=0.05, parallelism=2, static=True
    )
    assert ray_engine.wait(task_id, 60).state is TaskState.SUCCEEDED
    messages = [(line.source, line.message) for line in ray_engine.logs_of(task_id)]
    assert any(s == "function-1" and "first batch of epoch 1" in m for s, m in messages)
    assert any("printed by function 0" in m for _, m in messages)
    assert kept_at_epoch_starts(ray_engine, task_id) == {1: [0, 0], 2: [6, 6], 3: [6, 6]}


def _alive_actor_pids() -> set[int]:
    """Pids of the function actors the cluster holds alive (the GCS's table: the state API
    needs the dashboard, which the tests leave off)."""
    from ray._private import state

    actors = state.actors().values()
    return {
        a["Pid"] for a in actors if a["State"] == "ALIVE" and a["ActorClassName"] == "FunctionActor"
    }


def _mid_epoch_2(engine: Any, task_id: str) -> bool:
    task = engine.get_task(task_id)
    assert not task.state.finished, task.error
    return task.epoch == 2 and task.round >= 3


@pytest.mark.slow
def test_the_central_merge_scores_each_epoch_in_its_last_round(ray_engine, digits):
    """`--shards 0` on Ray: the release of an epoch's last round carries the merged
    reference, so its functions score the model itself, with no validation invocation."""
    add_mlp_and_digits(ray_engine, digits)
    info = ray_engine.wait(ray_engine.train(**TASK, shards=0, validate_every=1), 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert _invocations(ray_engine, info.id) == 1 + 2 * 4
    epochs = ray_engine.get_history(info.id).epochs
    assert all(e.accuracy is not None for e in epochs) and epochs[-1].accuracy > 85
    accuracy, loss = _score(ray_engine.backend.models.load_final(info.id), digits)
    assert epochs[-1].accuracy == pytest.approx(accuracy, abs=1e-4)
    assert epochs[-1].val_loss == pytest.approx(loss, rel=1e-4)


def test_a_killed_ray_worker_is_replaced_mid_epoch(ray_engine, digits):
    """The recovery tests' task (tests/integration/test_recovery.py) on two Ray nodes:
    SIGKILL of one function's actor costs a replayed round, not the task."""
    add_mlp_and_digits(ray_engine, digits)
    baseline = ray_engine.wait(ray_engine.train(**TASK), 120)
    assert baseline.state is TaskState.SUCCEEDED, baseline.error
    task_id = ray_engine.train(**TASK)
    wait_for(lambda: _mid_epoch_2(ray_engine, task_id), 60)
    pids = ray_engine.backend.describe()["worker_pids"][task_id]
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    info = ray_engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert (info.failures, info.retries) == (1, 1)
    epochs = ray_engine.get_history(task_id).epochs
    assert [(e.failures, e.retries, e.parallelism) for e in epochs] == [
        (0, 0, 2), (1, 1, 2), (0, 0, 2), (0, 0, 2),
    ]  # fmt: skip
    assert abs(info.accuracy - baseline.accuracy) <= 1.0, (info.accuracy, baseline.accuracy)
    logs = "\n".join(line.message for line in ray_engine.logs_of(task_id))
    assert "its Ray actor on node" in logs and "died" in logs, logs
    assert "replaying round" in logs
    # Over epochs 2-4: the baseline's first epoch started the actors cold. Printed with -s.
    unbroken = ray_engine.get_history(baseline.id).epochs
    extra = sum(e.epoch_duration_s for e in epochs[1:]) - sum(
        e.epoch_duration_s for e in unbroken[1:]
    )
    print(f"extra wall time of the kill: {extra:+.2f} s")
    # Nothing of the dead actor is left: the cluster holds exactly the backend's actors.
    workers = {w["pid"] for w in ray_engine.backend.describe()["workers"]}
    assert pids[0] not in workers
    wait_for(lambda: _alive_actor_pids() == workers, 10)
    assert ray.util.placement_group_table() == {}


@pytest.mark.slow
def test_losing_a_node_costs_a_function_not_the_task(ray_engine, cluster, digits):
    """With no room left for a replacement, the survivor takes the lost function's samples
    (N 2 -> 1 at the next round) and the task trains on to the end."""
    add_mlp_and_digits(ray_engine, digits)
    task_id = ray_engine.train(**TASK)
    wait_for(lambda: _mid_epoch_2(ray_engine, task_id), 60)
    victim = next(n for n in cluster.worker_nodes if n.node_id in _nodes_of(ray_engine, task_id))
    try:
        cluster.remove_node(victim)
        info = ray_engine.wait(task_id, timeout_s=120)
        assert info.state is TaskState.SUCCEEDED, info.error
        assert (info.failures, info.retries) == (1, 0)
        epochs = ray_engine.get_history(task_id).epochs
        assert [e.parallelism for e in epochs] == [2, 1, 1, 1]
        assert epochs[-1].train_loss < epochs[0].train_loss
        assert info.accuracy > 80.0
        logs = "\n".join(line.message for line in ray_engine.logs_of(task_id))
        assert "no live Ray node has room" in logs, logs
        assert "re-split over the 1 other function(s)" in logs
        assert {w["node_id"] for w in ray_engine.backend.describe()["workers"]} == {
            n.node_id for n in cluster.worker_nodes if n is not victim
        }
    finally:
        cluster.add_node(num_cpus=1, resources=NODE_RESOURCES, object_store_memory=80 * MB)
        cluster.wait_for_nodes()


def test_without_ray_the_backend_asks_for_the_extra():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from kubeml.errors import MissingDependencyError\n"
        "try:\n"
        "    import kubeml.backends.ray\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'kubeml[ray]'" in out.stdout
