"""Resilience shown by killing things: a worker (once, three times), the server, a stop
and an immediate resume.

Each run ends succeeded with the final weights of an uninterrupted run with the same seed,
bit for bit (`torch.equal` on every tensor), on the real 8x8 digits with the process
backend: a replayed round starts from the round's reference, the lost function's
optimizer state at that round and the round's RNG, and the merge does not depend on the
order in which functions report. The digits are stored as 64-sample chunks (24 of them,
three windows of the epoch's order), so the lanes, their re-splits and the functions'
reads cross chunks.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kubeml.api.schemas import TaskState
from kubeml.control.plan.position import Position
from kubeml.control.records.checkpoints import CheckpointStore
from kubeml.procs import children
from kubeml.stores import chunks
from kubeml.stores.datasets import LocalDatasetStore
from tests.conftest import free_port, function_source
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.slow

TASK: dict[str, Any] = dict(
    function="mlp", dataset="digits", epochs=4, batch_size=16, k=4, lr=0.05,
    parallelism=2, static=True, seed=3,
)  # fmt: skip
SLOW_MLP = function_source(SLEEP_PER_BATCH_S=0.01)  # ~0.5 s an epoch: time to kill mid-epoch


@pytest.fixture(scope="module", autouse=True)
def small_chunks() -> Iterator[None]:
    """Datasets this module creates (in the test's process) are stored as 64-sample chunks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunks, "CHUNK_TARGET_BYTES", 1)
        yield


def add_mlp_and_digits(engine: Any, digits: dict[str, np.ndarray]) -> None:
    engine.create_function("mlp", SLOW_MLP)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )


def upload_mlp_and_digits(client: Any, source: str, digits: dict[str, Any], folder: Path) -> None:
    """The same through a server: the function, and the digits as .npy files."""
    client.create_function("mlp", source)
    paths = []
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.save(folder / f"{field}.npy", digits[field])
        paths.append(folder / f"{field}.npy")
    client.create_dataset("digits", *paths)


@dataclass(frozen=True)
class Baseline:
    accuracy: float
    weights: dict[str, torch.Tensor]

    def assert_same_weights(self, weights: dict[str, torch.Tensor]) -> None:
        assert weights.keys() == self.weights.keys()
        differ = [k for k, v in weights.items() if not torch.equal(v, self.weights[k])]
        assert not differ, f"not the uninterrupted run's bits: {differ}"


@pytest.fixture(scope="module")
def baseline(digits: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """Test accuracy and final weights of the uninterrupted run."""
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    tmp = tmp_path_factory.mktemp("baseline")
    with Engine(
        Settings(home=tmp / "home", backend="process", capacity=2, shm_dir=tmp / "shm")
    ) as e:
        add_mlp_and_digits(e, digits)
        assert e.datasets.chunk_samples("digits") == 64
        info = e.wait(e.train(**TASK), 240)
        assert info.state is TaskState.SUCCEEDED, info.traceback
        assert info.accuracy is not None and info.accuracy > 85
        return Baseline(info.accuracy, e.models.load_final(info.id))


def test_a_killed_worker_is_replaced_mid_epoch(make_engine, digits, baseline):
    engine = make_engine("process")
    add_mlp_and_digits(engine, digits)
    task_id = engine.train(**TASK)
    wait_for(lambda: engine.get_task(task_id).epoch == 2 and engine.get_task(task_id).round >= 3)
    pids = engine.backend.describe()["worker_pids"][task_id]
    os.kill(pids[0], signal.SIGKILL)
    info = engine.wait(task_id, 240)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    assert (info.failures, info.retries) == (1, 1)
    epochs = engine.get_history(task_id).epochs
    assert [e.failures for e in epochs] == [0, 1, 0, 0]
    assert abs(info.accuracy - baseline.accuracy) <= 1.0, (info.accuracy, baseline)
    logs = "\n".join(line.message for line in engine.logs_of(task_id))
    assert "replaying round" in logs
    baseline.assert_same_weights(engine.models.load_final(task_id))


def test_three_killed_workers_change_no_bit_of_the_result(make_engine, digits, baseline):
    engine = make_engine("process")
    add_mlp_and_digits(engine, digits)
    task_id = engine.train(**TASK)
    for kill, (epoch, round_index) in enumerate([(1, 3), (2, 5), (3, 2)]):
        wait_for(
            lambda e=epoch, r=round_index: (
                engine.get_task(task_id).epoch >= e and engine.get_task(task_id).round >= r
            )
        )
        pids = engine.backend.describe()["worker_pids"][task_id]
        os.kill(pids[kill % len(pids)], signal.SIGKILL)
        wait_for(lambda k=kill: engine.get_task(task_id).retries == k + 1)
    info = engine.wait(task_id, 240)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    assert (info.failures, info.retries) == (3, 3)
    baseline.assert_same_weights(engine.models.load_final(task_id))


def test_a_worker_killed_in_an_epochs_first_round_replays_it_with_the_lanes_kept_momentum(
    make_engine, digits, baseline
):
    """The replay starts from the optimizer state the lane carried out of the last epoch."""
    engine = make_engine("process")
    engine.create_function(
        "mlp", function_source(SLEEP_PER_BATCH_S=0.01, PAUSE_AT_EPOCH_START_S=2.0)
    )
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    task_id = engine.train(**TASK)
    # Epoch 2 recorded: function 0 pauses 2 s before epoch 3's first batch.
    wait_for(lambda: len(engine.get_history(task_id).epochs) == 2)
    time.sleep(0.3)
    pids = engine.backend.describe()["worker_pids"][task_id]
    os.kill(pids[0], signal.SIGKILL)
    info = engine.wait(task_id, 240)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    assert [e.failures for e in engine.get_history(task_id).epochs] == [0, 0, 1, 0]
    logs = "\n".join(line.message for line in engine.logs_of(task_id))
    assert re.search(r"replaying round 1\b", logs), logs
    baseline.assert_same_weights(engine.models.load_final(task_id))


def test_resume_right_after_stop_continues_exactly(make_engine, digits, baseline):
    engine = make_engine("process")
    add_mlp_and_digits(engine, digits)
    task_id = engine.train(**TASK)
    wait_for(lambda: engine.get_task(task_id).epoch == 2 and engine.get_task(task_id).round >= 3)
    engine.stop_task(task_id)
    stopped = engine.wait(task_id, 60)
    assert stopped.state is TaskState.STOPPED
    assert len(engine.get_history(task_id).epochs) == 1  # the half epoch is not recorded
    engine.resume_task(task_id)  # the warm workers still map the stopped run's files
    info = engine.wait(task_id, 240)
    assert info.state is TaskState.SUCCEEDED, info.traceback
    assert [e.epoch for e in engine.get_history(task_id).epochs] == [1, 2, 3, 4]
    assert abs(info.accuracy - baseline.accuracy) <= 1.0, (info.accuracy, baseline)
    baseline.assert_same_weights(engine.models.load_final(task_id))


@pytest.mark.parametrize("at", ["mid-epoch", "epoch-start"])
def test_a_killed_server_comes_back_and_resumes_the_task(digits, baseline, tmp_path, at):
    """From a mid-epoch checkpoint; or from an epoch's end, where the functions go on into
    the next epoch with the optimizer states their lanes kept (function 0 pauses before
    epoch 3's first batch, and the server dies then)."""
    from kubeml.client import Client, ensure_server, server_status, stop_server
    from kubeml.settings import Settings

    settings = Settings(
        home=tmp_path / "home", host="127.0.0.1", port=free_port(), backend="process",
        capacity=2, shm_dir=tmp_path / "shm", api_token=None, url=None,
    )  # fmt: skip
    try:
        # Stored here as the other tests' 64-sample chunks (the server would cut its own).
        LocalDatasetStore(settings.home / "datasets").create("digits", dict(digits))
        client = Client(ensure_server(settings, quiet=True), token="")
        pause = 3.0 if at == "epoch-start" else 0.0
        client.create_function(
            "mlp", function_source(SLEEP_PER_BATCH_S=0.01, PAUSE_AT_EPOCH_START_S=pause)
        )
        assert LocalDatasetStore(settings.home / "datasets").chunk_samples("digits") == 64
        task_id = client.train(**TASK, checkpoint_every_s=0.2 if at == "mid-epoch" else 600)
        store = CheckpointStore(settings.home / "checkpoints")

        def wanted_checkpoint() -> Position | None:
            # Mid-epoch checkpoints are written in a thread: wait until one is on disk, early
            # enough in its epoch (12 rounds) that the epoch's end does not replace it first.
            checkpoint = store.load(task_id)
            if checkpoint is None:
                return None
            p = checkpoint.position
            if at == "epoch-start":
                return p if (p.epoch, p.round) == (2, 0) else None
            return p if p.epoch in (1, 2) and 1 <= p.round <= 8 else None

        wait_for(lambda: wanted_checkpoint() is not None)
        time.sleep(0.3)  # epoch-start: function 0 is in its pause
        status = server_status(settings)
        assert status is not None
        workers = children(int(status["pid"]))
        assert workers, "the server runs its workers as children"
        os.kill(int(status["pid"]), signal.SIGKILL)
        wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10)  # no orphans

        client = Client(ensure_server(settings, quiet=True), token="")
        assert client.get_task(task_id).state in (TaskState.QUEUED, TaskState.RUNNING)
        info = client.wait(task_id, timeout_s=240, poll_s=0.2)
        assert info.state is TaskState.SUCCEEDED, info.error
        assert [e.epoch for e in client.get_history(task_id).epochs] == [1, 2, 3, 4]
        assert abs(info.accuracy - baseline.accuracy) <= 1.0, (info.accuracy, baseline)
        logs = "\n".join(line.message for line in client.logs(task_id))
        # The checkpoint the kill left is mid-epoch (a later one only moves it forward).
        resumed = r"epoch [2-4], round [1-9]" if at == "mid-epoch" else r"epoch 3 start"
        assert re.search(rf"resuming from the checkpoint at {resumed}", logs), logs
        final = torch.load(settings.home / "models" / f"{task_id}.pt", weights_only=True)
        baseline.assert_same_weights(final)
    finally:
        stop_server(settings, timeout_s=30)
