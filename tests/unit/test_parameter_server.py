"""The parameter server on the local store: the merged model is left in the published
weights of the functions that go on, so they need not load the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubeml.control.merge.outer import OuterConfig
from kubeml.control.merge.parameter_server import ParameterServer
from kubeml.runtime.sync import RoundReport
from kubeml.stores.models import LocalModelStore


class CopyingStore(LocalModelStore):
    """The same files, but published weights as if they had travelled (Ray)."""

    shares_published = False


def _report(func_id: int, samples: int, final: bool = False) -> RoundReport:
    return RoundReport("t", func_id, 0, samples, 0.0, 1, final)


@pytest.mark.parametrize("outer", ["average", "adaptive"])
def test_the_merge_is_left_in_the_published_weights_of_the_functions_that_go_on(
    tmp_path: Path, outer: str
) -> None:
    store = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    store.write_reference("t", net.state_dict())
    for func_id in range(3):
        moved = {k: v + func_id + 1 for k, v in net.state_dict().items()}
        store.publish("t", func_id, moved)
    final_before = store.published_groups("t", 1, None)["float32"].clone()
    idle_before = store.published_groups("t", 2, None)["float32"].clone()
    server = ParameterServer("t", store, OuterConfig(outer, 0.7, 0.9))
    assert server.merge([_report(0, 8), _report(1, 4, final=True), _report(2, 0)]) is True
    reference = store.reference_groups("t")
    published = store.published_groups("t", 0, None)
    assert all(torch.equal(published[d], reference[d]) for d in reference)
    assert not torch.equal(reference["float32"], idle_before)  # the merge moved it
    # the function that left and the one that trained nothing are not written
    assert torch.equal(store.published_groups("t", 1, None)["float32"], final_before)
    assert torch.equal(store.published_groups("t", 2, None)["float32"], idle_before)


def test_a_store_whose_weights_travel_gets_no_copy(tmp_path: Path) -> None:
    store = CopyingStore(tmp_path / "shm", tmp_path / "models")
    store.write_reference("t", {"w": torch.zeros(4)})
    store.publish("t", 0, {"w": torch.ones(4)})
    server = ParameterServer("t", store, OuterConfig("adaptive", 0.7, 0.9))
    assert server.merge([_report(0, 8)]) is False
    assert store.published_groups("t", 0, None)["float32"].tolist() == [1.0] * 4
    # the first step: lr 0.7 times (the change 1 + the Nesterov look-ahead 0.9 * 1)
    assert store.reference_groups("t")["float32"].tolist() == pytest.approx([1.33] * 4)
