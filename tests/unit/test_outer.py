"""The outer optimizer: plain averaging, and Nesterov on the averaged change of a round."""

import pytest
import torch
from torch import nn

import kubeml.control.merge.outer as outer
from kubeml.control.merge.average import weighted_average
from kubeml.control.merge.outer import OuterConfig, OuterOptimizer, stepped_spans
from kubeml.control.merge.workers import MergeWorkers
from kubeml.stores.flat import FlatLayout


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))


def _groups(layout: FlatLayout, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    groups = {dtype: torch.zeros(n, dtype=getattr(torch, dtype)) for dtype, n in layout.group_numel}
    layout.flatten_into(state, groups)
    return groups


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.is_floating_point():
            noise = torch.randn(t.shape, generator=gen) * 0.1
            out[name] = (t + noise).abs() if "running_var" in name else t + noise
        else:
            out[name] = t + seed
    return out


def test_bn_buffers_and_integers_are_left_out_of_the_stepped_spans():
    layout = FlatLayout.from_state(_net().state_dict())
    spans = stepped_spans(layout)
    assert set(spans) == {"float32"}
    covered = {i for a, b in spans["float32"] for i in range(a, b)}
    for e in (e for e in layout.entries if e.dtype == "float32"):
        inside = set(range(e.offset, e.offset + e.numel)) <= covered
        is_param = e.name.rsplit(".", 1)[-1] in ("weight", "bias")
        assert inside == is_param, e.name


def test_average_is_the_plain_sample_weighted_mean():
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    ref = _groups(layout, net.state_dict())
    states = [_groups(layout, _perturbed(net.state_dict(), s)) for s in (1, 2)]
    expected = weighted_average(states, [3, 1])
    OuterOptimizer(OuterConfig(), layout).step(ref, states, [3, 1])
    for dtype in ref:
        assert torch.equal(ref[dtype], expected[dtype])


@pytest.mark.parametrize("block", [4, 1 << 16])
def test_nesterov_matches_torch_sgd_on_the_pseudo_gradient(monkeypatch, block):
    monkeypatch.setattr(outer, "BLOCK", block)  # small blocks: the blocking must not matter
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    ref = _groups(layout, net.state_dict())
    opt = OuterOptimizer(OuterConfig("nesterov", lr=0.7, momentum=0.9), layout)
    # The same outer step done by torch: SGD(nesterov) on params, gradient = ref - average.
    shadow = ref["float32"].clone().requires_grad_(True)
    sgd = torch.optim.SGD([shadow], lr=0.7, momentum=0.9, nesterov=True)
    mask = torch.zeros_like(shadow, dtype=torch.bool)
    for a, b in stepped_spans(layout)["float32"]:
        mask[a:b] = True
    for round_index in range(3):
        base = layout.views({k: v.clone() for k, v in ref.items()})
        states = [_groups(layout, _perturbed(base, 10 * round_index + s)) for s in (1, 2)]
        average = weighted_average(states, [2, 1])["float32"]
        with torch.no_grad():
            shadow.grad = torch.where(mask, shadow - average, torch.zeros_like(shadow))
        sgd.step()
        with torch.no_grad():
            shadow[~mask] = average[~mask]  # buffers: the plain average
        opt.step(ref, states, [2, 1])
        assert torch.allclose(ref["float32"], shadow.detach(), atol=1e-6)
        assert torch.equal(ref["int64"], weighted_average(states, [2, 1])["int64"])
    # the step really extrapolates beyond the average (momentum builds up)
    assert not torch.allclose(ref["float32"][mask], average[mask])


def test_nesterov_keeps_running_variances_positive():
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    ref = _groups(layout, net.state_dict())
    opt = OuterOptimizer(OuterConfig("nesterov", lr=2.0, momentum=0.99), layout)
    for r in range(20):
        base = layout.views({k: v.clone() for k, v in ref.items()})
        shrunk = {k: v * 0.5 if "running_var" in k else v for k, v in base.items()}
        opt.step(ref, [_groups(layout, _perturbed(shrunk, r))], [1])
    var = layout.views(ref)["1.running_var"]
    assert (var > 0).all()


def test_state_dict_round_trip_continues_identically():
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    config = OuterConfig("nesterov", lr=0.7, momentum=0.9)
    a_ref, b_ref = _groups(layout, net.state_dict()), _groups(layout, net.state_dict())
    a = OuterOptimizer(config, layout)
    assert a.state_dict() == {}
    rounds = [[_groups(layout, _perturbed(net.state_dict(), s))] for s in range(4)]
    for states in rounds[:2]:
        a.step(a_ref, states, [1])
        b_ref = {k: v.clone() for k, v in a_ref.items()}
    saved = a.state_dict()
    assert set(saved) == {"momentum.float32"} and saved["momentum.float32"].abs().sum() > 0
    b = OuterOptimizer(config, layout)
    b.load_state_dict(saved)
    for states in rounds[2:]:
        a.step(a_ref, states, [1])
        b.step(b_ref, states, [1])
    assert torch.equal(a_ref["float32"], b_ref["float32"])


def test_bad_state_and_bad_config_are_named():
    layout = FlatLayout.from_state(_net().state_dict())
    with pytest.raises(ValueError, match="unknown outer optimizer state 'velocity'"):
        OuterOptimizer(OuterConfig(), layout).load_state_dict({"velocity": torch.zeros(1)})
    with pytest.raises(ValueError, match="must be one of"):
        OuterConfig("adam")
    with pytest.raises(ValueError, match="outer lr"):
        OuterConfig("nesterov", lr=0)
    with pytest.raises(ValueError, match="outer momentum"):
        OuterConfig("nesterov", momentum=1.0)


def _moved(layout: FlatLayout, ref: dict[str, torch.Tensor], step: torch.Tensor) -> dict:
    """A published state: the reference with `step` added to its stepped (parameter) spans."""
    state = {k: v.clone() for k, v in ref.items()}
    for a, b in stepped_spans(layout)["float32"]:
        state["float32"][a:b] += step[a:b]
    return state


@pytest.mark.parametrize("block", [4, 1 << 16])
def test_adaptive_keeps_the_momentum_of_a_steady_change_and_drops_it_on_a_reversal(
    monkeypatch, block
):
    monkeypatch.setattr(outer, "BLOCK", block)
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    adaptive = OuterOptimizer(OuterConfig("adaptive", lr=0.7, momentum=0.9), layout)
    nesterov = OuterOptimizer(OuterConfig("nesterov", lr=0.7, momentum=0.9), layout)
    ref_a, ref_n = _groups(layout, net.state_dict()), _groups(layout, net.state_dict())
    direction = torch.randn(ref_a["float32"].numel(), generator=torch.Generator().manual_seed(3))
    for _ in range(3):  # the same change every round: cos = 1, exactly nesterov
        adaptive.step(ref_a, [_moved(layout, ref_a, 0.01 * direction)], [1])
        nesterov.step(ref_n, [_moved(layout, ref_n, 0.01 * direction)], [1])
        assert torch.allclose(ref_a["float32"], ref_n["float32"], atol=1e-6)
    assert adaptive.last_scale == pytest.approx(1.0, abs=1e-5)

    before = ref_a["float32"].clone()
    adaptive.step(ref_a, [_moved(layout, ref_a, -0.01 * direction)], [1])  # a reversal
    assert adaptive.last_scale == 0.0
    # the momentum is dropped: the step is lr times the change alone
    mask = torch.zeros_like(before, dtype=torch.bool)
    for a, b in stepped_spans(layout)["float32"]:
        mask[a:b] = True
    expected = before[mask] - 0.7 * 0.01 * direction[mask]
    assert torch.allclose(ref_a["float32"][mask], expected, atol=1e-6)
    nesterov.step(ref_n, [_moved(layout, ref_n, -0.01 * direction)], [1])
    # nesterov carries on along the old direction, past the reversal
    assert ((ref_n["float32"] - before)[mask] @ direction[mask]) > 0


def test_adaptive_state_round_trips_and_buffers_take_the_plain_average():
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    config = OuterConfig("adaptive", lr=0.7, momentum=0.9)
    a_ref = _groups(layout, net.state_dict())
    a = OuterOptimizer(config, layout)
    rounds = [[_groups(layout, _perturbed(net.state_dict(), s))] for s in range(4)]
    for states in rounds[:2]:
        a.step(a_ref, states, [1])
    b_ref = {k: v.clone() for k, v in a_ref.items()}
    b = OuterOptimizer(config, layout)
    b.load_state_dict(a.state_dict())
    for states in rounds[2:]:
        a.step(a_ref, states, [1])
        b.step(b_ref, states, [1])
    assert torch.equal(a_ref["float32"], b_ref["float32"])
    var = layout.views(a_ref)["1.running_var"]
    assert torch.allclose(var, layout.views(rounds[-1][0])["1.running_var"])


def _round(layout: FlatLayout, ref: dict[str, torch.Tensor], seed: int) -> list:
    """Two published states of a round: the reference moved by a steady drift (+0.1 on
    every float), plus each state's own noise, so the cosine lies between 0 and 1."""
    base = {k: v + 0.1 if v.is_floating_point() else v for k, v in layout.views(ref).items()}
    return [_groups(layout, _perturbed(base, seed + s)) for s in (1, 2)]


@pytest.mark.parametrize("name", ["average", "nesterov", "adaptive"])
def test_the_result_is_the_same_bits_on_one_lane_or_several(monkeypatch, name):
    monkeypatch.setattr(outer, "BLOCK", 4)  # many blocks, so the workers share them out
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    results = []
    for workers in (MergeWorkers(1), MergeWorkers(3)):
        ref = _groups(layout, net.state_dict())
        opt = OuterOptimizer(OuterConfig(name, lr=0.7, momentum=0.9), layout, workers)
        scales = []
        for r in range(4):
            opt.step(ref, _round(layout, ref, 10 * r), [3, 1])
            scales.append(opt.last_scale)
        results.append((ref, opt.state_dict(), scales))
    (one, one_state, one_scales), (many, many_state, many_scales) = results
    assert all(torch.equal(one[k], many[k]) for k in one)
    assert one_state.keys() == many_state.keys()
    assert all(torch.equal(one_state[k], many_state[k]) for k in one_state)
    assert one_scales == many_scales
    if name == "adaptive":
        assert 0 < min(one_scales[1:]) < 1  # the cosine really scaled the momentum


def _adaptive_on_blocks(monkeypatch, block: int) -> tuple:
    """An adaptive 0.7/0.9 optimizer on blocks of `block` elements (two lanes), the
    reference groups it steps, and the mask of the stepped elements."""
    monkeypatch.setattr(outer, "BLOCK", block)
    layout = FlatLayout.from_state(_net().state_dict())
    ref = _groups(layout, _net().state_dict())
    opt = OuterOptimizer(OuterConfig("adaptive", lr=0.7, momentum=0.9), layout, MergeWorkers(2))
    mask = torch.zeros(ref["float32"].numel(), dtype=torch.bool)
    for a, b in stepped_spans(layout)["float32"]:
        mask[a:b] = True
    return layout, ref, opt, mask


def test_adaptive_matches_the_straightforward_whole_tensor_computation(monkeypatch):
    layout, ref, opt, mask = _adaptive_on_blocks(monkeypatch, 4)
    x = ref["float32"].double()  # the same maths, whole tensors, in float64
    v = torch.zeros_like(x)
    for r in range(4):
        states = _round(layout, ref, 10 * r)
        average = weighted_average(states, [3, 1])
        d = average["float32"].double()[mask] - x[mask]
        cos = float(d @ v[mask]) / float(d.norm() * v[mask].norm()) if r else 1.0
        kept = 0.9 * max(0.0, cos)
        v[mask] = kept * v[mask] + d
        x[mask] = x[mask] + 0.7 * (d + kept * v[mask])
        x[~mask] = average["float32"].double()[~mask]
        opt.step(ref, states, [3, 1])
        assert opt.last_scale == pytest.approx(max(0.0, cos), abs=1e-5)
        assert torch.allclose(ref["float32"].double(), x, atol=1e-5)
        assert torch.equal(ref["int64"], average["int64"])


@pytest.mark.parametrize("name", ["average", "nesterov", "adaptive"])
def test_copies_get_the_merged_model_and_may_be_the_merged_states(monkeypatch, name):
    monkeypatch.setattr(outer, "BLOCK", 4)
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    plain_ref, copied_ref = _groups(layout, net.state_dict()), _groups(layout, net.state_dict())
    plain = OuterOptimizer(OuterConfig(name, lr=0.7, momentum=0.9), layout, MergeWorkers(2))
    copied = OuterOptimizer(OuterConfig(name, lr=0.7, momentum=0.9), layout, MergeWorkers(2))
    for r in range(3):
        states = _round(layout, plain_ref, 10 * r)
        plain.step(plain_ref, states, [3, 1])
        own = [{k: v.clone() for k, v in s.items()} for s in states]
        copied.step(copied_ref, own, [3, 1], copies=own)  # written back into its inputs
        assert all(torch.equal(plain_ref[k], copied_ref[k]) for k in plain_ref)
        for state in own:
            assert all(torch.equal(state[k], copied_ref[k]) for k in copied_ref)


def _noisy_round(layout: FlatLayout, ref: dict[str, torch.Tensor], seed: int) -> list:
    """Two published states whose changes (on the stepped spans) are orthogonal noise:
    nothing shared between the two functions."""
    gen = torch.Generator().manual_seed(seed)
    first, second = (torch.randn(ref["float32"].numel(), generator=gen) * 0.1 for _ in "ab")
    second -= (second @ first) / (first @ first) * first
    return [_moved(layout, ref, first), _moved(layout, ref, second)]


def test_adaptive_takes_the_sum_of_changes_that_are_mostly_noise(monkeypatch):
    layout, ref, opt, mask = _adaptive_on_blocks(monkeypatch, 8)
    for r in range(3):
        before = ref["float32"].clone()
        states = _noisy_round(layout, ref, 10 * r)
        total = sum(s["float32"] - before for s in states)
        opt.step(ref, states, [1, 1])
        assert opt.noise is not None and opt.noise > 16 / 17  # past the rule's ramp
        assert opt.last_scale == 0.0  # the momentum is dropped
        # the reference moved by the sum of the two changes, as the plain loop would
        assert torch.allclose(ref["float32"][mask], (before + total)[mask], atol=1e-5)
        untouched = ~mask  # the statistics and their neighbours: no step at all
        assert torch.equal(ref["float32"][untouched], before[untouched])


def test_the_noise_share_is_kept_in_the_state_and_continues_identically():
    net = _net()
    layout = FlatLayout.from_state(net.state_dict())
    config = OuterConfig("adaptive", lr=0.7, momentum=0.9)
    a_ref = _groups(layout, net.state_dict())
    a = OuterOptimizer(config, layout)
    for r in range(2):
        a.step(a_ref, _round(layout, a_ref, 10 * r), [3, 1])
    state = a.state_dict()
    assert float(state["noise"]) == a.noise
    b_ref = {k: v.clone() for k, v in a_ref.items()}
    b = OuterOptimizer(config, layout)
    b.load_state_dict(state)
    fresh = OuterOptimizer(config, layout)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "noise"})
    c_ref = {k: v.clone() for k, v in a_ref.items()}
    for r in range(2, 6):
        states = _noisy_round(layout, a_ref, 10 * r)  # the share climbs: the rule acts
        a.step(a_ref, states, [3, 1])
        b.step(b_ref, [{k: v.clone() for k, v in s.items()} for s in states], [3, 1])
        fresh.step(c_ref, [{k: v.clone() for k, v in s.items()} for s in states], [3, 1])
    assert torch.equal(a_ref["float32"], b_ref["float32"])
    assert a.noise == b.noise
    assert not torch.equal(a_ref["float32"], c_ref["float32"])  # the share mattered
