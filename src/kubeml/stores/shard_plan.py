"""How a sharded task's model is cut: which element ranges each shard owns, and which of
them take the outer optimizer's step. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kubeml.stores.codecs import check_precision
from kubeml.stores.flat import FlatLayout

ALIGN = 1024  # elements: shard boundaries fall on multiples of this
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
Span = tuple[str, int, int]  # (dtype, start, stop) in elements


def stepped_spans(layout: FlatLayout) -> dict[str, list[tuple[int, int]]]:
    """Per floating dtype group, the (start, stop) element ranges that take the outer step:
    every entry except BatchNorm buffers, adjacent entries joined into one range."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for entry in sorted(layout.entries, key=lambda e: (e.dtype, e.offset)):
        if not getattr(torch, entry.dtype).is_floating_point:
            continue
        if entry.name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES:
            continue
        runs = spans.setdefault(entry.dtype, [])
        stop = entry.offset + entry.numel
        if runs and runs[-1][1] == entry.offset:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((entry.offset, stop))
    return spans


@dataclass(frozen=True)
class OuterStep:
    """The outer optimizer as a shard applies it (`OuterConfig`'s three numbers)."""

    name: str = "average"
    lr: float = 1.0
    momentum: float = 0.0

    @property
    def plain(self) -> bool:
        return self.name == "average" or (self.lr == 1.0 and self.momentum == 0.0)

    @property
    def adaptive(self) -> bool:
        return self.name == "adaptive" and self.momentum > 0


@dataclass(frozen=True)
class ShardSpec:
    """What one shard owns: an element range of each dtype group it holds, and the spans
    of those (from the range's start) that take the outer step."""

    index: int
    ranges: tuple[Span, ...]
    stepped: tuple[Span, ...]
    outer: OuterStep
    precision: str

    @property
    def numel(self) -> int:
        return sum(stop - start for _, start, stop in self.ranges)


def plan_shards(
    layout: FlatLayout, shards: int, outer: OuterStep, precision: str
) -> list[ShardSpec]:
    """`shards` specs covering every element of `layout` once; fewer when the model has
    fewer than `shards` aligned pieces (no shard is empty)."""
    check_precision(precision)
    if shards < 1:
        raise ValueError(f"a sharded task needs at least 1 shard, not {shards}")
    floats = [(d, n) for d, n in layout.group_numel if getattr(torch, d).is_floating_point]
    largest = max((n for _, n in floats), default=0)
    count = max(1, min(shards, -(-largest // ALIGN)))
    ranges: list[list[Span]] = [[] for _ in range(count)]
    for dtype, numel in layout.group_numel:
        if not getattr(torch, dtype).is_floating_point:
            ranges[0].append((dtype, 0, numel))
            continue
        cuts = [min(numel, round(i * numel / count / ALIGN) * ALIGN) for i in range(count)]
        for i in range(count):
            stop = cuts[i + 1] if i + 1 < count else numel
            if stop > cuts[i]:
                ranges[i].append((dtype, cuts[i], stop))
    spans = {} if outer.plain else stepped_spans(layout)
    specs = []
    for i, own in enumerate(ranges):
        stepped = [
            (dtype, max(a, start) - start, min(b, stop) - start)
            for dtype, start, stop in own
            for a, b in spans.get(dtype, [])
            if min(b, stop) > max(a, start)
        ]
        specs.append(ShardSpec(i, tuple(own), tuple(stepped), outer, precision))
    return [s for s in specs if s.ranges]


def slice_groups(spec: ShardSpec, groups: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The shard's pieces of full flat groups (views, no copy), of the groups present."""
    return {dtype: groups[dtype][a:b] for dtype, a, b in spec.ranges if dtype in groups}


def gaps(spans: list[tuple[int, int]], numel: int) -> list[tuple[int, int]]:
    """The element ranges of a group between its (sorted) stepped spans: those take the
    plain average."""
    out, pos = [], 0
    for start, stop in spans:
        if start > pos:
            out.append((pos, start))
        pos = stop
    if pos < numel:
        out.append((pos, numel))
    return out
