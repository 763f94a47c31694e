"""The sharded parameter server on a local multi-node Ray cluster: two 1-CPU worker nodes
(a shard server on each), a head with no CPUs as the control plane's node.

Every guarantee of the central merge holds on the sharded path: the task trains (loss
falls, accuracy rises) at every sync precision, every sample is merged once per epoch,
a killed function's round is replayed, N changes at a round boundary, a stop and resume
ends with the uninterrupted run's weights, and a shard server SIGKILLed mid-epoch costs
at most the round in flight: the task ends with the same weights as a run that lost
nothing. The function trains with plain SGD: a Ray function's optimizer state is not
kept off its actor (a replayed round starts a fresh optimizer), so only a stateless one
makes a replay the same bits.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kubeml.api.schemas import TaskState
from tests.conftest import function_source
from tests.integration.conftest import RAY_NODE_RESOURCES, wait_for
from tests.integration.test_epoch_validation import _invocations, _score
from tests.integration.test_recovery import TASK

STATELESS: dict[str, Any] = dict(SLEEP_PER_BATCH_S=0.01, MOMENTUM=0.0)
STATELESS_MLP = function_source(**STATELESS)

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = pytest.mark.ray

NODE_RESOURCES = RAY_NODE_RESOURCES


@pytest.fixture
def engine(cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits) -> Iterator[Any]:
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    monkeypatch.delenv("KUBEML_CAPACITY", raising=False)
    settings = Settings(home=tmp_path / "ray-home", backend="ray", round_timeout_s=60)
    backend = RayBackend.from_settings(settings, resources_per_function=NODE_RESOURCES)
    engine = Engine(settings, backend=backend)
    add_mlp_and_digits(engine, digits)
    try:
        yield engine
    finally:
        engine.close()


def add_mlp_and_digits(engine: Any, digits: dict[str, Any]) -> None:
    engine.create_function("mlp", STATELESS_MLP)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )


def _weights(engine: Any, task_id: str) -> dict[str, torch.Tensor]:
    return engine.backend.models.load_final(task_id)


def _log(engine: Any, task_id: str) -> str:
    return "\n".join(line.message for line in engine.logs_of(task_id))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_default_on_two_nodes_is_two_shards_and_trains(engine):
    task_id = engine.train(**TASK)
    plane = _plane_of(engine, task_id)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    # The init function's model went to the shards from its own node, cut there by that
    # node's server: the control plane neither took it in nor pushed it out.
    assert plane.cut_near is True
    assert engine.backend.models.sharded.pushes == 0
    servers = engine.backend.describe()["shard_servers"]  # (node, pid): one on each node
    assert len({node for node, _ in servers}) == len(servers) == 2
    epochs = engine.get_history(task_id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss * 0.7
    assert info.accuracy > 85.0
    assert all(e.samples == 1497 for e in epochs)  # every sample once per epoch
    # No checkpoint was due (every 60 s): the model crossed to the control plane once, at
    # the end, not at each of the 4 epoch ends with the outer state beside it.
    assert engine.backend.models.sharded.gathers == 1
    assert engine.backend.models.has_final(task_id)

    asked = engine.wait(engine.train(**TASK, checkpoint_every_s=0), 120)  # epoch ends only
    assert asked.state is TaskState.SUCCEEDED, asked.error
    assert engine.backend.models.sharded.gathers == 1 + 4 + 3  # the model at each end, the
    # outer state at the first three (the last epoch's checkpoint would be deleted at once)


@pytest.fixture(scope="module")
def sharded_baseline(cluster: Any, digits, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of the uninterrupted sharded run (fp32, two shards)."""
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    home = tmp_path_factory.mktemp("sharded-baseline") / "home"
    settings = Settings(home=home, backend="ray", round_timeout_s=60)
    backend = RayBackend.from_settings(settings, resources_per_function=NODE_RESOURCES)
    with Engine(settings, backend=backend) as engine:
        add_mlp_and_digits(engine, digits)
        info = engine.wait(engine.train(**TASK, shards=2), 120)
        assert info.state is TaskState.SUCCEEDED, info.error
        return _weights(engine, info.id)


def _mid_epoch_2(engine: Any, task_id: str) -> bool:
    task = engine.get_task(task_id)
    assert not task.state.finished, task.error
    return task.epoch == 2 and task.round >= 3


def _plane_of(engine: Any, task_id: str) -> Any:
    """The task's shard plane, once it has one."""
    planes: list[Any] = []
    wait_for(lambda: planes.append(engine.backend.models.sharded.plane(task_id)) or planes[-1], 60)
    return planes[-1]


def _shard_pids(engine: Any, task_id: str) -> list[int]:
    plane = engine.backend.models.sharded.plane(task_id)
    assert plane is not None, "the task is not sharded"
    return [pid for _, pid in ray.get([s.where.remote() for s in plane.servers])]


def test_a_killed_shard_server_costs_a_round_and_no_bit(engine, sharded_baseline):
    """SIGKILL of a shard server mid-epoch: its shards come back from their replicas on
    the other node, the round in flight is trained again, the weights are the
    uninterrupted run's."""
    task_id = engine.train(**TASK, shards=2)
    wait_for(lambda: _mid_epoch_2(engine, task_id), 60)
    victim = _shard_pids(engine, task_id)[1]
    os.kill(victim, signal.SIGKILL)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    logs = _log(engine, task_id)
    assert "lost" in logs and "shard server(s) replaced" in logs, logs
    assert victim not in _shard_pids_after(engine)
    epochs = engine.get_history(task_id).epochs
    assert [e.retries for e in epochs] == [0, 1, 0, 0]  # the round, trained again
    assert all(e.samples == 1497 for e in epochs)
    assert _same(_weights(engine, task_id), sharded_baseline)


def _shard_pids_after(engine: Any) -> list[int]:
    return [pid for _, pid in engine.backend.describe()["shard_servers"]]


def test_a_killed_function_on_the_sharded_path_changes_no_bit(engine, sharded_baseline):
    info = kill_a_function_mid_epoch(engine, {**TASK, "shards": 2})
    assert _same(_weights(engine, info.id), sharded_baseline)


def kill_a_function_mid_epoch(engine: Any, task: dict[str, Any]) -> Any:
    """SIGKILL one function mid-epoch 2: its round is replayed and the task succeeds."""
    task_id = engine.train(**task)
    wait_for(lambda: _mid_epoch_2(engine, task_id), 60)
    pids = engine.backend.describe()["worker_pids"][task_id]
    os.kill(pids[0], signal.SIGKILL)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert (info.failures, info.retries) == (1, 1)
    assert "replaying round" in _log(engine, task_id)
    return info


def test_a_round_socket_broken_mid_epoch_costs_a_round_and_no_bit(engine, sharded_baseline):
    """One function's round connection to the control plane breaks (shut from the control
    plane's end, as a dropped TCP connection would): the function's publish fails as the
    backend's fault, its round is replayed, and the weights are the uninterrupted run's."""
    task_id = engine.train(**TASK, shards=2)
    wait_for(lambda: _mid_epoch_2(engine, task_id), 60)
    channels = engine.backend._rounds  # the control plane's round sockets
    with channels._lock:
        sockets = list(channels._open.values())
    assert len(sockets) == 2, "both functions publish over their round socket"
    sockets[0].shut()
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert (info.failures, info.retries) == (1, 1)
    logs = _log(engine, task_id)
    assert "round socket to the control plane broke" in logs and "replaying round" in logs, logs
    assert _same(_weights(engine, task_id), sharded_baseline)


def test_a_first_model_cut_away_from_its_writer_trains_the_same_bits(
    engine, sharded_baseline, monkeypatch
):
    """Where the writer's node has no shard server (fewer shards than nodes), or Ray cannot
    say where the model is, one server fetches it all and cuts it: the same model."""
    monkeypatch.setattr(ray.experimental, "get_object_locations", lambda refs, **kw: {})
    task_id = engine.train(**TASK, shards=2)
    plane = _plane_of(engine, task_id)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert plane.cut_near is False
    assert engine.backend.models.sharded.pushes == 0  # still not through the control plane
    assert _same(_weights(engine, task_id), sharded_baseline)


def test_stop_and_resume_on_the_sharded_path_changes_no_bit(engine, sharded_baseline):
    task_id = engine.train(**TASK, shards=2)
    wait_for(lambda: _mid_epoch_2(engine, task_id), 60)
    assert engine.stop_task(task_id)
    assert engine.wait(task_id, 60).state is TaskState.STOPPED
    engine.resume_task(task_id)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert [e.epoch for e in engine.get_history(task_id).epochs] == [1, 2, 3, 4]
    assert _same(_weights(engine, task_id), sharded_baseline)
    assert engine.backend.models.sharded.pushes >= 1  # the checkpoint, from the control plane


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_compressed_rounds_train_as_well_and_resume_exactly(engine, precision):
    """A compressed task trains to the fp32 run's accuracy; stopped and resumed
    mid-epoch (the functions' view comes back from the checkpoint), it ends with the
    bits of its own uninterrupted run."""
    whole = engine.wait(engine.train(**TASK, shards=2, sync_precision=precision), 120)
    assert whole.state is TaskState.SUCCEEDED, whole.error
    assert whole.accuracy > 85.0
    epochs = engine.get_history(whole.id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss * 0.7
    task_id = engine.train(**TASK, shards=2, sync_precision=precision)
    wait_for(lambda: _mid_epoch_2(engine, task_id), 60)
    engine.stop_task(task_id)
    assert engine.wait(task_id, 60).state is TaskState.STOPPED
    engine.resume_task(task_id)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert _same(_weights(engine, task_id), _weights(engine, whole.id))


def _views_served(engine: Any, counter: str = "served") -> int:
    """Whole views the functions read from the shard servers so far (`fetched`: first
    models the servers fetched from the writer's node, not taken from a function there)."""
    pool = engine.backend.models.sharded._pool
    servers = pool.servers(0, started=True) if pool is not None else []
    return sum(ray.get([getattr(server, counter).remote() for server in servers]))


def test_no_function_reads_the_whole_model_when_it_can_build_it(engine, digits):
    """int8, validation after every epoch. The functions build the first model themselves
    (the user's init with the init's seed: the shards' bits), so they read no whole model
    at the start; each epoch's last round settles the model to what they hold, they score
    it there (no validation invocation, no read of the model), and the next epoch starts
    from the view they hold."""
    task = dict(TASK, shards=2, sync_precision="int8", validate_every=1)
    before, fetched = _views_served(engine), _views_served(engine, "fetched")
    info = engine.wait(engine.train(**task), 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert _views_served(engine) == before
    assert _views_served(engine, "fetched") == fetched  # each node's servers took it there
    assert _invocations(engine, info.id) == 1 + 2 * 4
    epochs = engine.get_history(info.id).epochs
    assert all(e.accuracy is not None for e in epochs)
    assert epochs[-1].accuracy > epochs[0].accuracy and epochs[-1].accuracy > 85
    accuracy, loss = _score(_weights(engine, info.id), digits)  # the settled final model
    assert epochs[-1].accuracy == pytest.approx(accuracy, abs=1e-4)
    assert epochs[-1].val_loss == pytest.approx(loss, rel=1e-4)


def test_a_function_whose_first_model_is_not_the_tasks_reads_it(engine, digits, sharded_baseline):
    """When the model a function builds is not bit for bit the task's (here its init()
    moves the weights outside the init invocation), it reads the whole model from the
    shards, and the task ends with the same bits as the run whose functions built it."""
    engine.create_function("moved", function_source(**STATELESS, PERTURB_REBUILT_INIT=True))
    before, fetched = _views_served(engine), _views_served(engine, "fetched")
    info = engine.wait(engine.train(**{**TASK, "function": "moved"}, shards=2), 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    assert _views_served(engine) - before == 2 * 2  # 2 functions, each from 2 shards
    assert _views_served(engine, "fetched") - fetched == 2 * 2  # 2 primaries, 2 replicas
    assert _same(_weights(engine, info.id), sharded_baseline)


def test_a_resize_mid_epoch_merges_every_sample_once(engine):
    shrink_mid_epoch(engine, {**TASK, "epochs": 2, "shards": 2})


def shrink_mid_epoch(engine: Any, task: dict[str, Any]) -> None:
    """N 2 -> 1 from round 3 of the first epoch: every sample still merged once."""
    task_id = engine.train(**task)
    wait_for(lambda: engine.get_task(task_id).round >= 3, 60)
    engine.tasks.request_parallelism(task_id, 1, "the test shrinks it")
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    epochs = engine.get_history(task_id).epochs
    assert epochs[0].parallelism_path == [2, 1]
    assert all(e.samples == 1497 for e in epochs)
    assert info.accuracy > 80.0


def _alive_shard_servers() -> set[int]:
    """Pids of the shard servers the cluster holds alive (the GCS's table)."""
    from ray._private import state

    actors = state.actors().values()
    return {
        a["Pid"] for a in actors if a["State"] == "ALIVE" and a["ActorClassName"] == "ShardServer"
    }


def test_a_killed_control_plane_comes_back_and_resumes_the_sharded_task(
    cluster, digits, sharded_baseline, tmp_path
):
    """SIGKILL of the server (the Ray driver): its shard servers and functions die with
    it; the next server resumes the task from its mid-epoch checkpoint onto new shards,
    and it ends with the uninterrupted run's weights."""
    from kubeml.client import Client, ensure_server, server_status, stop_server
    from kubeml.control.records.checkpoints import CheckpointStore
    from kubeml.settings import Settings
    from tests.integration.test_recovery import free_port, upload_mlp_and_digits

    settings = Settings(
        home=tmp_path / "home", host="127.0.0.1", port=free_port(), backend="ray",
        ray_address=cluster.address, api_token=None, url=None, round_timeout_s=60,
    )  # fmt: skip
    try:
        client = Client(ensure_server(settings, quiet=True), token="")
        upload_mlp_and_digits(client, STATELESS_MLP, digits, tmp_path)
        task_id = client.train(**TASK, shards=2, checkpoint_every_s=0.2)
        store = CheckpointStore(settings.home / "checkpoints")

        def mid_epoch() -> bool:
            checkpoint = store.load(task_id)
            return (
                checkpoint is not None
                and checkpoint.position.epoch in (1, 2)
                and (1 <= checkpoint.position.round <= 8)
            )

        wait_for(mid_epoch, 120)
        status = server_status(settings)
        assert status is not None
        shard_pids = _alive_shard_servers()
        assert len(shard_pids) == 2
        os.kill(int(status["pid"]), signal.SIGKILL)
        wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in shard_pids), 60)

        client = Client(ensure_server(settings, quiet=True), token="")
        info = client.wait(task_id, timeout_s=240, poll_s=0.2)
        assert info.state is TaskState.SUCCEEDED, info.error
        assert [e.epoch for e in client.get_history(task_id).epochs] == [1, 2, 3, 4]
        logs = "\n".join(line.message for line in client.logs(task_id))
        assert "resuming from the checkpoint at epoch" in logs, logs
        final = torch.load(settings.home / "models" / f"{task_id}.pt", weights_only=True)
        assert _same(final, sharded_baseline)
    finally:
        stop_server(settings, timeout_s=30)


def test_a_dataset_is_read_from_its_home_once_and_lives_on_the_nodes(engine, digits, monkeypatch):
    """The digits stored as 64-sample chunks: the first task reads each chunk from the
    control plane's home (two functions may ask for one at once in its first epoch); from
    then on the chunks come from the nodes that keep them: a second task of 3 epochs
    reads none, and the nodes' servers hold every sample once between them."""
    from kubeml.stores import chunks

    monkeypatch.setattr(chunks, "CHUNK_TARGET_BYTES", 1)  # one 64-sample unit a chunk
    engine.delete_dataset("digits")  # the function reads "digits": stored again, chunked so
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    datasets = engine.backend.datasets
    assert datasets.chunk_samples("digits") == 64
    task = dict(TASK)
    first = engine.wait(engine.train(**{**task, "epochs": 1}), 120)
    assert first.state is TaskState.SUCCEEDED, first.error
    chunk_count = -(-1497 // 64) + -(-300 // 64)
    read = datasets.chunks_read
    assert chunk_count <= read <= 2 * chunk_count
    task_id = engine.train(**{**task, "epochs": 3})
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    epochs = engine.get_history(task_id).epochs
    assert all(e.samples == 1497 for e in epochs)
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert datasets.chunks_read == read  # nothing more through the control plane
    servers = engine.backend.models.sharded._pool.servers(0, started=True)
    held = sum(ray.get([s.chunk_bytes.remote() for s in servers]))
    assert held == 1797 * (64 + 8)  # every sample on exactly one node


def test_a_registered_dataset_is_read_by_the_functions_not_the_control_plane(
    engine, digits, tmp_path
):
    """A shared directory every node reads: the functions read their ranges from it, and
    no chunk passes through the control plane or the nodes' servers."""
    from tests.integration.test_registered_data import share

    where = share(tmp_path / "shared", digits)
    engine.register_dataset("shared-digits", where)
    engine.create_function("shared-mlp", function_source(DATASET="shared-digits"))
    task_id = engine.train(**{**TASK, "function": "shared-mlp", "dataset": "shared-digits"})
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info.error
    epochs = engine.get_history(task_id).epochs
    assert all(e.samples == 1497 for e in epochs)
    assert epochs[-1].train_loss < epochs[0].train_loss and info.accuracy > 80
    assert engine.backend.datasets.chunks_read == 0
