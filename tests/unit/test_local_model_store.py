"""A warm worker's model store sees a task's files re-created when the task resumes."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from kubeml.stores.models import LocalModelStore


def test_a_resumed_task_on_the_worker_that_ran_it_publishes_into_the_new_files(
    tmp_path: Path,
) -> None:
    control = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    worker = pickle.loads(pickle.dumps(control))  # as a worker process unpickles it
    state = {"w": torch.zeros(4)}
    control.write_reference("t", state)
    worker.begin("t")
    worker.load_reference_into("t", state)
    worker.publish("t", 0, {"w": torch.ones(4)})
    assert control.published_groups("t", 0, None)["float32"].tolist() == [1.0] * 4

    control.clear_task("t")  # the task stopped; resumed later on the same warm worker
    control.write_reference("t", {"w": torch.full((4,), 2.0)})
    worker.begin("t")
    worker.load_reference_into("t", state)
    assert state["w"].tolist() == [2.0] * 4  # the new reference, not the unlinked file
    worker.publish("t", 0, {"w": torch.full((4,), 3.0)})
    assert control.published_groups("t", 0, None)["float32"].tolist() == [3.0] * 4
