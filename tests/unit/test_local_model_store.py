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


def _published(store: LocalModelStore, task: str, func_id: int) -> dict[str, torch.Tensor]:
    return store.layout(task).views(store.published_groups(task, func_id, None))


def test_shared_tensors_are_published_in_place_and_an_optimizer_keeps_training_them(
    tmp_path: Path,
) -> None:
    store = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    store.write_reference("t", net.state_dict())
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    store.share_into("t", 1, net)
    assert list(net.parameters()) == params  # the same Parameter objects
    state = net.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in before)  # values kept
    published = _published(store, "t", 1)
    assert all(state[k].data_ptr() == published[k].data_ptr() for k in state)

    net(torch.randn(5, 3)).sum().backward()
    optimizer.step()  # trains the shared memory: nothing to copy at publish
    store.publish("t", 1, state)
    after = _published(store, "t", 1)
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert all(torch.equal(after[k], v) for k, v in net.state_dict().items())

    store.load_reference_into("t", state)  # the next round starts from the reference
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)


def test_tensors_that_cannot_be_shared_are_still_published_by_copy(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)
    tied = torch.nn.Linear(3, 3, bias=False)
    net = torch.nn.ModuleDict({"conv": conv, "a": tied, "b": torch.nn.Linear(3, 3)})
    net["b"].weight = tied.weight  # one Parameter under two names
    store.write_reference("t", net.state_dict())
    store.share_into("t", 0, net)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # left as it was
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    store.publish("t", 0, net.state_dict())
    published = _published(store, "t", 0)
    assert all(torch.equal(published[k], v) for k, v in net.state_dict().items())
