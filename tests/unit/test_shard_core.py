"""The sharded parameter server's maths (`kubeml.stores.shard_core`, `codecs`), without Ray:
shards over a real model's layout, functions that train and deposit, replicas, rollbacks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeml.control.merge.outer import OuterConfig, OuterOptimizer
from kubeml.stores.codecs import INT4_BLOCK, INT8_BLOCK, decode, encode
from kubeml.stores.flat import FlatLayout
from kubeml.stores.outer_rule import StepTerms, adaptive_step, total, weights_sq
from kubeml.stores.shard_core import MissingDepositError, ShardCore
from kubeml.stores.shard_plan import ALIGN, OuterStep, plan_shards, slice_groups


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.BatchNorm1d(96), torch.nn.Linear(96, 10)
    )


def _groups(state: dict[str, torch.Tensor], layout: FlatLayout) -> dict[str, torch.Tensor]:
    groups = {d: torch.zeros(n, dtype=getattr(torch, d)) for d, n in layout.group_numel}
    layout.flatten_into(state, groups)
    return groups


class Plane:
    """S shards of one task with their replicas, as the Ray plane drives them."""

    def __init__(self, model: dict[str, torch.Tensor], shards: int, outer: OuterStep, precision):
        self.layout = FlatLayout.from_state(model)
        self.specs = plan_shards(self.layout, shards, outer, precision)
        groups = _groups(model, self.layout)
        self.primaries = [ShardCore.start(s, slice_groups(s, groups)) for s in self.specs]
        self.replicas = [ShardCore.start(s, slice_groups(s, groups)) for s in self.specs]
        self.outer = outer
        self.noise: float | None = None

    def view(self) -> dict[str, torch.Tensor]:
        full = {d: torch.zeros(n, dtype=getattr(torch, d)) for d, n in self.layout.group_numel}
        for spec, core in zip(self.specs, self.primaries, strict=True):
            for dtype, part in core.functions_view().items():
                a, b = next((a, b) for d, a, b in spec.ranges if d == dtype)
                full[dtype][a:b] = torch.from_numpy(part)
        return full

    def model(self) -> dict[str, torch.Tensor]:
        full = {d: torch.zeros(n, dtype=getattr(torch, d)) for d, n in self.layout.group_numel}
        for spec, core in zip(self.specs, self.primaries, strict=True):
            for dtype, a, b in spec.ranges:
                full[dtype][a:b] = core.master[dtype]
        return full

    def deposit(self, token: bytes, weights: dict[str, torch.Tensor]) -> None:
        view = self.view()
        for spec, core in zip(self.specs, self.primaries, strict=True):
            payload = {}
            for dtype, a, b in spec.ranges:
                mine = weights[dtype][a:b]
                if mine.is_floating_point():
                    payload[dtype] = encode(mine - view[dtype][a:b], spec.precision)
                else:
                    payload[dtype] = mine.numpy().copy()
            core.deposit(token, payload)

    def merge(self, contributions: list[tuple[bytes, int]], settle: bool = False) -> None:
        outer = self.outer
        terms = StepTerms(0.0 if outer.plain else outer.momentum, outer.lr)
        sums = [core.reduce(contributions) for core in self.primaries]
        if outer.adaptive:
            share = weights_sq([s for _, s in contributions])
            terms, self.noise = adaptive_step(
                outer.lr, outer.momentum, total(sums), share, self.noise
            )
        for core, replica in zip(self.primaries, self.replicas, strict=True):
            # As a shard server does it: the change goes ahead, the step's terms after.
            change = core.round_change()
            message = core.finish(terms, settle)
            steps = {k: message[k] for k in ("kept", "scale", "settle")}
            replica.replicate({**change, **steps})


def _trained(view: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        d: t + scale * torch.randn(t.shape, generator=g) if t.is_floating_point() else t + 1
        for d, t in view.items()
    }


def test_shards_cover_every_element_once_on_aligned_cuts():
    layout = FlatLayout.from_state(_net().state_dict())
    for shards in (1, 2, 3, 7):
        specs = plan_shards(layout, shards, OuterStep("adaptive", 0.7, 0.9), "fp32")
        for dtype, numel in layout.group_numel:
            covered = sorted((a, b) for s in specs for d, a, b in s.ranges if d == dtype)
            assert covered[0][0] == 0 and covered[-1][1] == numel
            assert all(b == c for (_, b), (c, _) in itertools.pairwise(covered))
            assert all(a % ALIGN == 0 for a, _ in covered)
        # BatchNorm's statistics take the plain average: never in a stepped span
        stepped = sum(b - a for s in specs for _, a, b in s.stepped)
        bn_buffers = 96 * 2
        assert stepped == layout.group_numel[0][1] - bn_buffers


@pytest.mark.parametrize(
    ("name", "lr", "mu"), [("average", 1.0, 0.0), ("nesterov", 0.7, 0.9), ("adaptive", 0.7, 0.9)]
)
def test_fp32_shards_follow_the_central_merge(name, lr, mu):
    """Three rounds of two functions: S=3 fp32 shards end where the central outer
    optimizer does (to float rounding: the shards add the averaged change to the model,
    the central merge averages the models). The functions' changes are pure noise here,
    so `adaptive` takes their sum on both (`outer_rule`)."""
    state = _net().state_dict()
    plane = Plane(state, 3, OuterStep(name, lr, mu), "fp32")
    layout = plane.layout
    reference = _groups(state, layout)
    central = OuterOptimizer(OuterConfig(name, lr, mu), layout)
    for r in range(3):
        start = plane.view()
        assert all(torch.allclose(start[d], reference[d], atol=1e-5) for d in start)
        functions = [_trained(start, seed=10 * r + f) for f in range(2)]
        for f, weights in enumerate(functions):
            plane.deposit(bytes([r, f]), weights)
        plane.merge([(bytes([r, 0]), 30), (bytes([r, 1]), 10)])
        central.step(reference, functions, [30, 10])
    model = plane.model()
    for dtype in model:
        assert torch.allclose(model[dtype], reference[dtype], atol=1e-5), dtype
    if name == "adaptive":
        assert plane.noise == pytest.approx(central.noise, abs=1e-6)
        assert central.noise is not None and central.noise > 16 / 17  # past the ramp


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "int4"])
def test_a_replica_holds_the_same_bits_as_its_primary(precision):
    state = _net().state_dict()
    plane = Plane(state, 2, OuterStep("adaptive", 0.7, 0.9), precision)
    for r in range(4):
        view = plane.view()
        for f in range(3):
            plane.deposit(bytes([r, f]), _trained(view, seed=r * 3 + f))
        plane.merge([(bytes([r, f]), 10 + f) for f in range(3)])
    for primary, replica in zip(plane.primaries, plane.replicas, strict=True):
        mine, theirs = primary.state(), replica.state()
        for kind in ("master", "view", "momentum"):
            assert mine[kind].keys() == theirs[kind].keys()
            for dtype in mine[kind]:
                assert torch.equal(mine[kind][dtype], theirs[kind][dtype]), (kind, dtype)
        assert mine["merged"] == theirs["merged"] == 4
        if precision != "fp32":  # the functions train from a rounded copy of the model
            assert mine["view"]


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_rollback_puts_back_the_bits_of_the_last_merged_round(precision):
    state = _net().state_dict()
    plane = Plane(state, 2, OuterStep("adaptive", 0.7, 0.9), precision)
    for r in range(2):
        view = plane.view()
        plane.deposit(bytes([r]), _trained(view, seed=r))
        plane.merge([(bytes([r]), 5)])
    before = [core.state() for core in plane.primaries]
    view = plane.view()
    plane.deposit(b"lost", _trained(view, seed=99))
    plane.merge([(b"lost", 5)])  # round 3 merged on every shard, then lost elsewhere
    for core in plane.primaries:
        assert core.rollback(merged=3)
        assert not core.rollback(merged=3)  # once
    for core, kept in zip(plane.primaries, before, strict=True):
        now = core.state()
        for kind in ("master", "view", "momentum"):
            for dtype in kept[kind]:
                assert torch.equal(now[kind][dtype], kept[kind][dtype]), (kind, dtype)
        assert core.update(b"lost") is None  # its update is gone with it


def test_a_token_the_shard_never_received_refuses_the_merge():
    state = _net().state_dict()
    plane = Plane(state, 1, OuterStep(), "fp32")
    plane.deposit(b"a", _trained(plane.view(), seed=1))
    with pytest.raises(MissingDepositError, match="no deposit"):
        plane.primaries[0].reduce([(b"a", 3), (b"zz", 3)])


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_compressed_updates_keep_the_functions_view_near_the_model(precision):
    """The view's rounding error does not pile up: after many rounds it stays within
    one round's rounding of the model."""
    state = _net().state_dict()
    plane = Plane(state, 2, OuterStep("nesterov", 0.7, 0.9), precision)
    for r in range(20):
        view = plane.view()
        plane.deposit(bytes([r]), _trained(view, seed=r, scale=0.01))
        plane.merge([(bytes([r]), 1)])
    view, model = plane.view(), plane.model()
    gap = (view["float32"] - model["float32"]).abs().max().item()
    scale = model["float32"].abs().max().item()
    assert gap < scale * {"bf16": 0.005, "int8": 0.01, "int4": 0.1}[precision], gap


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_a_settled_round_leaves_the_model_exactly_the_functions_view(precision):
    """The epoch's last round (`settle`, when the functions score the model they load):
    the model becomes the view, on the primary and its replica alike; the next rounds
    carry their rounding again."""
    plane = Plane(_net().state_dict(), 2, OuterStep("adaptive", 0.7, 0.9), precision)
    for r in range(3):
        view = plane.view()
        plane.deposit(bytes([r]), _trained(view, seed=r))
        plane.merge([(bytes([r]), 4)], settle=r == 1)
        model, view = plane.model(), plane.view()
        assert all(torch.equal(model[d], view[d]) for d in model) == (r == 1), r
        for primary, replica in zip(plane.primaries, plane.replicas, strict=True):
            mine, theirs = primary.state(), replica.state()
            for kind in ("master", "view", "momentum"):
                assert all(torch.equal(t, theirs[kind][d]) for d, t in mine[kind].items())


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_function_applying_the_update_holds_the_shards_view_bit_for_bit(precision):
    state = _net().state_dict()
    plane = Plane(state, 2, OuterStep("adaptive", 0.7, 0.9), precision)
    mine = plane.view()  # what a function loaded at the round's start
    plane.deposit(b"t", _trained(mine, seed=3))
    plane.merge([(b"t", 8)])
    for spec, core in zip(plane.specs, plane.primaries, strict=True):
        update = core.update(b"t")
        assert update is not None
        for dtype, a, b in spec.ranges:
            part = update[dtype]
            if isinstance(part, np.ndarray):
                mine[dtype][a:b] = torch.from_numpy(part)
            else:
                mine[dtype][a:b] += decode(part)
    theirs = plane.view()
    assert all(torch.equal(mine[d], theirs[d]) for d in mine)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3 * INT8_BLOCK + 5),
    scale=st.floats(1e-6, 1e3),
    precision=st.sampled_from(["fp32", "bf16", "int8", "int4"]),
)
def test_codecs_round_trip_within_their_precision(n, scale, precision):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * scale
    encoded = encode(x, precision)
    y = decode(encoded)
    assert y.shape == x.shape and y.dtype == torch.float32
    err = (x - y).abs().max().item()
    bound = {"fp32": 0.0, "bf16": 2**-8, "int8": 1 / 254 + 1e-6, "int4": 1 / 14 + 1e-6}[precision]
    assert err <= bound * x.abs().max().item() + 1e-30
    bytes_per = encoded.nbytes / n
    most = {"fp32": 4, "bf16": 2, "int8": 1 + 4 / INT8_BLOCK * 2 + 4 / n}
    most["int4"] = 0.5 + 4 / INT4_BLOCK + (INT4_BLOCK // 2 + 4) / n  # the last block padded
    assert bytes_per <= most[precision]
    assert torch.equal(decode(encode(x, precision)), y)  # deterministic


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"shards": 2}, "shards=2"),
        ({"sync_precision": "int8"}, "sync_precision=int8"),
        ({"overlap": True}, "overlap=true"),
        ({"overlap": True, "shards": 0}, "overlap=true with shards=0"),
    ],
)
def test_a_backend_without_shards_refuses_them_by_name(digits_engine, fields, named):
    from kubeml.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=named):
        digits_engine.train(function="mlp", dataset="digits", **fields)
    assert digits_engine.list_tasks() == []  # nothing queued


@pytest.mark.parametrize(
    "bad", [{"shards": -1}, {"shards": 1.5}, {"sync_precision": "fp8"}, {"overlap": "yes"}]
)
def test_the_request_names_a_bad_shard_field(bad):
    from pydantic import ValidationError

    from kubeml.api.schemas import TrainRequest

    with pytest.raises(ValidationError, match=next(iter(bad))):
        TrainRequest(function="f", dataset="d", **bad)
