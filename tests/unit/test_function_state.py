"""A function's optimizer state kept between rounds: the same bits back, by round."""

from __future__ import annotations

import pytest
import torch

from kubeml.stores.function_state import FunctionStateFiles


def _trained(optimizer_class, **kwargs):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = optimizer_class(net.parameters(), **kwargs)
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    return net, optimizer


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.01})],
)
def test_the_state_comes_back_bit_for_bit_and_loads_into_a_fresh_optimizer(
    tmp_path, optimizer_class, kwargs
):
    net, optimizer = _trained(optimizer_class, **kwargs)
    files = FunctionStateFiles(tmp_path)
    files.save("t", 1, 0, 3, optimizer.state_dict())
    kept = files.load("t", 1, 0, 3)
    assert kept is not None
    expected = optimizer.state_dict()
    assert kept["param_groups"] == expected["param_groups"]
    for index, entries in expected["state"].items():
        for name, value in entries.items():
            assert torch.equal(kept["state"][index][name], value), (index, name)
    fresh = optimizer_class(net.parameters(), **kwargs)
    fresh.load_state_dict(kept)
    start = [p.detach().clone() for p in net.parameters()]
    after = []
    for stepper in (optimizer, fresh):  # the same step from the same weights and gradients
        with torch.no_grad():
            for p, s in zip(net.parameters(), start, strict=True):
                p.copy_(s)
                p.grad = torch.ones_like(p)
        stepper.step()
        after.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*after, strict=True))


def test_two_rounds_are_kept_and_a_round_asked_for_is_never_another(tmp_path):
    _, optimizer = _trained(torch.optim.SGD, lr=0.1, momentum=0.9)
    files = FunctionStateFiles(tmp_path)
    files.save("t", 0, 2, 4, optimizer.state_dict())
    files.save("t", 0, 2, 5, optimizer.state_dict())
    assert files.load("t", 0, 2, 4) is not None and files.load("t", 0, 2, 5) is not None
    files.save("t", 0, 2, 6, optimizer.state_dict())  # round 4's file now holds round 6
    assert files.load("t", 0, 2, 4) is None
    assert files.load("t", 0, 2, 7) is None and files.load("t", 1, 2, 5) is None
    assert files.load("t", 0, 1, 6) is None and files.load("t", 0, 4, 6) is None  # other epochs


def test_a_save_cut_short_leaves_no_state_that_claims_the_new_round(tmp_path):
    """Killed after the data but before the skeleton: the round reads as not kept."""
    _, optimizer = _trained(torch.optim.SGD, lr=0.1, momentum=0.9)
    files = FunctionStateFiles(tmp_path)
    files.save("t", 0, 0, 2, optimizer.state_dict())
    (tmp_path / "t" / "state-0-0.meta").unlink()  # what a kill between the two writes leaves
    assert files.load("t", 0, 0, 2) is None
    assert files.load("t", 0, 0, 0) is None


def test_an_epochs_first_round_is_kept_apart_from_its_rounds_and_from_the_next_epochs(tmp_path):
    """The state an epoch's lane starts with (kept at the last epoch's end) outlives the
    epoch's own rounds, and the next epoch's, kept at this epoch's end, does not replace it:
    a replay of the first round may still need it."""
    _, optimizer = _trained(torch.optim.SGD, lr=0.1, momentum=0.9)
    files = FunctionStateFiles(tmp_path)
    files.save("t", 0, 3, 0, optimizer.state_dict())  # kept at epoch 2's end
    for round_index in (1, 2, 3):
        files.save("t", 0, 3, round_index, optimizer.state_dict())
    files.save("t", 0, 4, 0, optimizer.state_dict())  # epoch 3's end, one round in
    assert files.load("t", 0, 3, 0) is not None and files.load("t", 0, 4, 0) is not None
    files.save("t", 0, 5, 0, optimizer.state_dict())
    assert files.load("t", 0, 3, 0) is None and files.load("t", 0, 5, 0) is not None
