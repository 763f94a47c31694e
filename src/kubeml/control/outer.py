"""The parameter server's outer optimizer: how a round's average moves the reference. No I/O.

A K-AVG round ends with the sample-weighted average of the functions' models. With
`average` (KubeML 2021) that average becomes the new reference. With `nesterov`
(SlowMo, DiLoCo) the averaged change `d = average - reference` is a pseudo-gradient
(its negative) for an outer SGD with Nesterov momentum on the reference:

    v <- momentum * v + d
    reference <- reference + lr * (d + momentum * v)

`nesterov` with lr 1 and momentum 0 is `average`.

`adaptive` (the default) is `nesterov` whose momentum is scaled, each round, by the
cosine between the round's change and the momentum, floored at 0:

    c <- max(0, cos(d, v));  v <- mu * c * v + d;  reference <- reference + lr * (d + mu * c * v)

Steady progress in one direction keeps most of the momentum; a change that turns away
from it (an overshoot: a large inner lr, few rounds an epoch, early training) drops it.
Plain `nesterov` 0.7 / 0.9 extrapolates ~7x the averaged change, which speeds up a
user's low inner lr and wrecks a high one (docs/performance.md: the seed's LeNet example
at lr 0.02 ended at 89% with `nesterov`, 93.8% with `average`, 93.9% with `adaptive`).
The cosine needs the whole change first, so `adaptive` makes two passes: one averages
and sums the dot products, one steps. Only floating-point *parameters* take
the outer step. Integer and boolean tensors (BatchNorm's `num_batches_tracked`) and
BatchNorm's running statistics (`running_mean`, `running_var`) take the plain average:
they are estimates of the data, not descent directions, and extrapolating a variance
with momentum can drive it negative.

The state (one momentum buffer per dtype group) is a plain dict of tensors, so a
checkpoint can save it (`state_dict` / `load_state_dict`). The step runs in blocks of
`BLOCK` elements: each block is averaged into a small scratch buffer and stepped while it
is in cache, so a round reads every published state, the reference and the momentum
once and writes the reference and the momentum once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from kubeml.control.merge import _running_mean_into, normalized_weights, weighted_average_into
from kubeml.stores.flat import FlatLayout

BLOCK = 1 << 18  # elements: 1 MB per float32 operand, ~5 MB for N=2, stays in L2/L3
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
OUTER_OPTIMIZERS = ("average", "nesterov", "adaptive")

Groups = Mapping[str, torch.Tensor]


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
class OuterConfig:
    name: str = "average"  # one of OUTER_OPTIMIZERS
    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OUTER_OPTIMIZERS:
            raise ValueError(
                f"outer optimizer must be one of {OUTER_OPTIMIZERS}, not {self.name!r}"
            )
        if not 0 < self.lr <= 2:
            raise ValueError(f"outer lr must be in (0, 2], not {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"outer momentum must be in [0, 1), not {self.momentum}")


class OuterOptimizer:
    """Merges a round's published states into the reference groups, in place."""

    def __init__(self, config: OuterConfig, layout: FlatLayout) -> None:
        self.config = config
        self._spans = stepped_spans(layout)
        self._momentum: dict[str, torch.Tensor] = {}
        self._scratch = torch.empty(0)
        self._change: dict[str, torch.Tensor] = {}  # adaptive: the whole round's change
        self.last_scale = 1.0  # adaptive: the momentum's share kept at the last round

    @property
    def plain(self) -> bool:
        c = self.config
        return c.name == "average" or (c.lr == 1.0 and c.momentum == 0.0)

    def step(self, reference: Groups, states: Sequence[Groups], samples: Sequence[int]) -> None:
        """Merge `states` (weighted by `samples`) into `reference` and take the outer step."""
        if self.plain:
            weighted_average_into(reference, states, samples)
            return
        if len(states) != len(samples):
            raise ValueError("one sample count per state is needed")
        pairs = [(s, w) for s, w in zip(states, normalized_weights(samples), strict=True) if w > 0]
        # One intra-op thread: the step is ~5 small memory-bound ops per block, and with 2
        # threads on a busy machine every op waits at an OpenMP barrier for a descheduled
        # thread (measured: 1.3-4 s a round for ResNet-18 at load 8 on 2 cores, vs 0.08 s).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._step(reference, states, samples, pairs)
        finally:
            torch.set_num_threads(threads)

    def _step(
        self,
        reference: Groups,
        states: Sequence[Groups],
        samples: Sequence[int],
        pairs: list[tuple[Groups, float]],
    ) -> None:
        with torch.no_grad():
            for dtype, target in reference.items():
                spans = self._spans.get(dtype, [])
                if not spans:  # integer groups, or a group of buffers only
                    weighted_average_into({dtype: target}, states, samples)
                    continue
                self._average_gaps(dtype, target, pairs, spans)
                if self._adaptive:
                    continue  # stepped below, once the whole change is known
                for start, stop in spans:
                    for a in range(start, stop, BLOCK):
                        b = min(a + BLOCK, stop)
                        self._step_block(dtype, target, pairs, a, b)
            if self._adaptive:
                self._adaptive_step(reference, pairs)

    @property
    def _adaptive(self) -> bool:
        return self.config.name == "adaptive" and self.config.momentum > 0

    def _blocks(self, dtype: str) -> Iterator[tuple[int, int]]:
        for start, stop in self._spans.get(dtype, []):
            for a in range(start, stop, BLOCK):
                yield a, min(a + BLOCK, stop)

    def _adaptive_step(self, reference: Groups, pairs: list[tuple[Groups, float]]) -> None:
        """Pass 1: the round's change `d` per block, and the sums for cos(d, v). Pass 2:
        the Nesterov step with the momentum scaled by max(0, cos)."""
        lr, mu = self.config.lr, self.config.momentum
        dv = dd = vv = 0.0
        for dtype, target in reference.items():
            change = self._change.get(dtype)
            if change is None or change.numel() != target.numel():
                change = self._change[dtype] = torch.zeros_like(target)
            momentum = self._buffer(dtype, target)
            for a, b in self._blocks(dtype):
                d, v = change[a:b], momentum[a:b]
                _running_mean_into(d, [(s[dtype][a:b], w) for s, w in pairs])
                d.sub_(target[a:b])
                dv += float(torch.dot(d, v))
                dd += float(torch.dot(d, d))
                vv += float(torch.dot(v, v))
        cosine = dv / math.sqrt(dd * vv) if dd > 0 and vv > 0 else 1.0
        self.last_scale = max(0.0, min(1.0, cosine))
        kept = mu * self.last_scale
        for dtype, target in reference.items():
            for a, b in self._blocks(dtype):
                d, v = self._change[dtype][a:b], self._momentum[dtype][a:b]
                torch.add(d, v, alpha=kept, out=v)  # v <- kept * v + d
                d.add_(v, alpha=kept)  # the Nesterov look-ahead
                target[a:b].add_(d, alpha=lr)

    def _average_gaps(
        self,
        dtype: str,
        target: torch.Tensor,
        pairs: list[tuple[Groups, float]],
        spans: list[tuple[int, int]],
    ) -> None:
        """Plain average of the elements of a group between its stepped spans."""
        gaps, pos = [], 0
        for start, stop in spans:
            if start > pos:
                gaps.append((pos, start))
            pos = stop
        if pos < target.numel():
            gaps.append((pos, target.numel()))
        for a, b in gaps:
            _running_mean_into(target[a:b], [(s[dtype][a:b], w) for s, w in pairs])

    def _step_block(
        self, dtype: str, target: torch.Tensor, pairs: list[tuple[Groups, float]], a: int, b: int
    ) -> None:
        lr, mu = self.config.lr, self.config.momentum
        if self._scratch.numel() < BLOCK or self._scratch.dtype != target.dtype:
            self._scratch = torch.empty(BLOCK, dtype=target.dtype)
        ref = target[a:b]
        d = self._scratch[: b - a]
        _running_mean_into(d, [(s[dtype][a:b], w) for s, w in pairs])
        d.sub_(ref)  # the averaged change of the round
        if mu == 0:
            ref.add_(d, alpha=lr)
            return
        v = self._buffer(dtype, target)[a:b]
        torch.add(d, v, alpha=mu, out=v)  # v <- mu * v + d
        d.add_(v, alpha=mu)  # d <- d + mu * v (the Nesterov look-ahead)
        ref.add_(d, alpha=lr)

    def _buffer(self, dtype: str, target: torch.Tensor) -> torch.Tensor:
        buffer = self._momentum.get(dtype)
        if buffer is None:
            buffer = self._momentum[dtype] = torch.zeros_like(target)
        return buffer

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The momentum buffers, keyed `momentum.<dtype>` (empty before the first step)."""
        return {f"momentum.{dtype}": t.clone() for dtype, t in self._momentum.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        momentum = {}
        for key, tensor in state.items():
            kind, _, dtype = key.partition(".")
            if kind != "momentum" or not dtype:
                raise ValueError(f"unknown outer optimizer state {key!r}")
            momentum[dtype] = tensor.detach().clone().reshape(-1)
        self._momentum = momentum
