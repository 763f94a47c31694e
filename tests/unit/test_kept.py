"""Optimizer states kept across rounds and epochs: which a checkpoint holds, where a resume
puts them back, and how a kept state loads into the optimizer a round builds."""

from __future__ import annotations

import torch

from kubeml.control.job.kept import gather_kept, restore_kept, starts_kept
from kubeml.control.plan.position import Position
from kubeml.runtime.rounds import kept_state, load_kept
from kubeml.stores.function_state import FunctionStateFiles


def _stepped(optimizer_class=torch.optim.SGD, **kwargs):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = optimizer_class(net.parameters(), **kwargs)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return net, optimizer


def test_a_kept_state_loads_with_the_hyperparameters_the_new_optimizer_was_built_with():
    net, old = _stepped(lr=0.1, momentum=0.9)
    fresh = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.5)  # an epoch's schedule
    assert load_kept(fresh, kept_state(old)) is None
    assert [(g["lr"], g["momentum"]) for g in fresh.param_groups] == [(0.02, 0.5)]
    for p in net.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], old.state[p]["momentum_buffer"])


def test_a_state_that_does_not_fit_the_new_optimizer_leaves_it_fresh_and_says_why():
    net, sgd = _stepped(lr=0.1, momentum=0.9)
    adam = torch.optim.Adam(net.parameters(), lr=0.01)
    assert load_kept(adam, kept_state(sgd)) == "configure_optimizers() built another optimizer"
    assert not adam.state
    two_groups = torch.optim.SGD([{"params": [net.weight]}, {"params": [net.bias]}], lr=0.1)
    reason = load_kept(two_groups, kept_state(sgd))
    assert reason is not None and reason.startswith("the kept state does not fit")
    assert not two_groups.state


def test_an_epochs_functions_start_kept_only_after_an_epoch_of_the_same_n():
    start, mid = Position.start(1000, 2, 0, 3), Position.start(1000, 2, 0, 3)
    mid.round = 2
    assert starts_kept("keep", None, mid) and starts_kept("keep", 3, mid)
    assert starts_kept("keep", 2, start)  # the last epoch's lanes were these
    assert not starts_kept("keep", None, start)  # the task's first epoch
    assert not starts_kept("keep", 3, start)  # N changed at the epoch's end
    assert not starts_kept("reset", 2, start) and not starts_kept("reset", 2, mid)


def test_a_checkpoint_keeps_a_finished_lanes_next_epoch_state_and_a_resume_puts_it_back(tmp_path):
    _, optimizer = _stepped(lr=0.1, momentum=0.9)
    state = kept_state(optimizer)
    files = FunctionStateFiles(tmp_path / "a")
    position = Position.start(1000, 2, 0, 3)
    lane = position.lanes[0]
    position.advance(0, len(lane.order), 1.0, 1)  # lane 0 has finished epoch 3
    position.round = 2
    assert position.live() == [1]
    files.save("t", 1, 3, 2, state)  # lane 1: its round 2
    assert gather_kept(files, "t", position) == {}  # lane 0 kept nothing yet
    files.save("t", 0, 4, 0, state)  # lane 0: epoch 4's first round
    kept = gather_kept(files, "t", position)
    assert sorted(kept) == [0, 1]

    elsewhere = FunctionStateFiles(tmp_path / "b")  # a resume on a fresh machine
    assert restore_kept(elsewhere, "t", position, kept)
    assert elsewhere.load("t", 1, 3, 2) is not None and elsewhere.load("t", 0, 4, 0) is not None
    assert elsewhere.load("t", 0, 3, 2) is None

    three = Position.start(1000, 3, 0, 4)  # resumed at the epoch's start with another N
    assert not restore_kept(FunctionStateFiles(tmp_path / "c"), "t", three, kept)
    assert not (tmp_path / "c").exists()
