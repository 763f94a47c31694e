"""Shared-memory scratch: a warm worker never reuses a cleared task's files; dead servers'
scratch is swept."""

import os

import torch

from kubeml.stores.models import LocalModelStore


def test_a_warm_worker_maps_the_new_files_of_a_task_started_again(tmp_path):
    server = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    worker = LocalModelStore(tmp_path / "shm", tmp_path / "models")  # another process's view
    state = {"w": torch.zeros(3)}
    server.write_reference("t", {"w": torch.ones(3)})
    worker.begin("t")
    worker.load_reference_into("t", state)
    worker.publish("t", 0, {"w": torch.full((3,), 2.0)})
    assert state["w"].tolist() == [1.0, 1.0, 1.0]

    server.clear_task("t")  # stopped; then resumed with other weights
    server.write_reference("t", {"w": torch.full((3,), 5.0)})
    worker.begin("t")
    worker.load_reference_into("t", state)
    assert state["w"].tolist() == [5.0, 5.0, 5.0]
    worker.publish("t", 0, {"w": torch.full((3,), 7.0)})
    assert server.published_groups("t", 0, None)["float32"].tolist() == [7.0, 7.0, 7.0]


def test_scratch_of_a_dead_server_is_swept_and_a_live_ones_is_kept(tmp_path):
    scratch = tmp_path / "shm"
    (scratch / "old-task").mkdir(parents=True)
    (scratch / ".owner").write_text(str(2**22 + 1))  # above any pid_max: a dead server
    store = LocalModelStore(scratch, tmp_path / "models")
    store.claim_scratch()
    assert not (scratch / "old-task").exists()
    assert (scratch / ".owner").read_text() == str(os.getpid())
    store.release_scratch()
    assert not scratch.exists()

    (scratch / "busy-task").mkdir(parents=True)
    (scratch / ".owner").write_text(str(os.getppid()))  # a live process owns it
    store.claim_scratch()
    assert (scratch / "busy-task").exists()
