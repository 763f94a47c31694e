"""The parameter server's averaging maths."""

import pytest
import torch
from torch import nn

from kubeml.control.merge.average import weighted_average, weighted_average_into
from kubeml.stores.flat import FlatLayout


def test_float_tensors_get_the_sample_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.0)}
    b = {"w": torch.tensor([4.0, 8.0]), "b": torch.tensor(3.0)}
    merged = weighted_average([a, b], [1, 2])
    assert torch.allclose(merged["w"], torch.tensor([3.0, 6.0]))
    assert torch.allclose(merged["b"], torch.tensor(2.0))


def test_integer_buffers_stay_integers_and_are_not_fractions():
    a = {"num_batches_tracked": torch.tensor(10, dtype=torch.int64)}
    b = {"num_batches_tracked": torch.tensor(13, dtype=torch.int64)}
    merged = weighted_average([a, b], [3, 1])
    assert merged["num_batches_tracked"].dtype == torch.int64
    assert merged["num_batches_tracked"].item() == 11  # 10.75 rounded, not 10.75
    assert weighted_average([a, b], [1, 3])["num_batches_tracked"].item() == 12  # 12.25
    same = weighted_average([a, a], [5, 7])
    assert same["num_batches_tracked"].item() == 10


def test_zero_sample_contributions_are_ignored():
    a = {"w": torch.tensor([1.0])}
    b = {"w": torch.tensor([100.0])}
    assert weighted_average([a, b], [3, 0])["w"].item() == 1.0


def test_no_samples_at_all_is_an_error():
    with pytest.raises(ValueError, match="no function trained"):
        weighted_average([{"w": torch.zeros(1)}], [0])


def test_merge_may_write_into_one_of_its_inputs():
    a = {"w": torch.tensor([2.0, 2.0])}
    b = {"w": torch.tensor([4.0, 6.0])}
    weighted_average_into(a, [a, b], [1, 1])
    assert torch.equal(a["w"], torch.tensor([3.0, 4.0]))


def test_batchnorm_statistics_are_averaged_through_flat_groups():
    nets = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(2)]
    for i, net in enumerate(nets):
        net.train()
        net(torch.randn(8, 3) + i * 5)  # different running statistics
    states = [net.state_dict() for net in nets]
    layout = FlatLayout.from_state(states[0])
    groups = []
    for state in states:
        g = {d: torch.zeros(n, dtype=getattr(torch, d)) for d, n in layout.group_numel}
        layout.flatten_into(state, g)
        groups.append(g)
    out = {d: torch.empty(n, dtype=getattr(torch, d)) for d, n in layout.group_numel}
    weighted_average_into(out, groups, [1, 3])
    merged = layout.views(out)
    expected = 0.25 * states[0]["1.running_mean"] + 0.75 * states[1]["1.running_mean"]
    assert torch.allclose(merged["1.running_mean"], expected)
    assert merged["1.num_batches_tracked"].item() == 1
    assert torch.allclose(
        merged["0.weight"], 0.25 * states[0]["0.weight"] + 0.75 * states[1]["0.weight"]
    )


def test_aliasing_any_input_and_many_inputs_give_the_exact_mean():
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 8.0]), torch.tensor([7.0, -1.0])
    expected = (1 * a + 2 * b + 3 * c) / 6
    for target_index in range(3):
        states = [{"w": t.clone()} for t in (a, b, c)]
        weighted_average_into(states[target_index], states, [1, 2, 3])
        assert torch.allclose(states[target_index]["w"], expected), target_index
