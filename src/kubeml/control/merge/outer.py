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

and which, when the functions' changes are mostly noise, moves towards the sum of the
changes instead (`kubeml.stores.outer_rule`: the rule and its measurements).

Steady progress in one direction keeps most of the momentum; a change that turns away
from it (an overshoot: a large inner lr, few rounds an epoch, early training) drops it.
Plain `nesterov` 0.7 / 0.9 extrapolates ~7x the averaged change, which speeds up a
user's low inner lr and wrecks a high one (docs/performance.md: the seed's LeNet example
at lr 0.02 ended at 89% with `nesterov`, 93.8% with `average`, 93.9% with `adaptive`).
The cosine needs the whole change first, so `adaptive` makes two passes: one averages
and sums the dot products (and each function's squared change, for the noise share),
one steps. Only floating-point *parameters* take
the outer step. Integer and boolean tensors (BatchNorm's `num_batches_tracked`) and
BatchNorm's running statistics (`running_mean`, `running_var`) take the plain average:
they are estimates of the data, not descent directions, and extrapolating a variance
with momentum can drive it negative.

The state (one momentum buffer per dtype group) is a plain dict of tensors, so a
checkpoint can save it (`state_dict` / `load_state_dict`). The step runs in blocks of
`BLOCK` elements: each block is averaged into a small scratch buffer and stepped while it
is in cache, so a round reads every published state, the reference and the momentum
once and writes the reference and the momentum once. The blocks are spread over the
cores (`kubeml.control.merge.workers`); a block's result does not depend on which lane computed
it, so the result is the same bits on one core or many.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kubeml.control.merge.average import (
    _running_mean_into,
    normalized_weights,
    weighted_average_into,
)
from kubeml.control.merge.workers import MergeWorkers, merge_workers
from kubeml.stores.flat import FlatLayout
from kubeml.stores.outer_rule import (
    NOISE_KEY,
    RoundSums,
    StepTerms,
    adaptive_step,
    noise_state,
    total,
)
from kubeml.stores.shard_plan import gaps, stepped_spans

BLOCK = 1 << 18  # elements: 1 MB per float32 operand, ~5 MB for N=2, stays in L2/L3
OUTER_OPTIMIZERS = ("average", "nesterov", "adaptive")
# The noise share (`outer_rule`) reads the functions' changes in about this many of the
# stepped blocks, evenly spaced (all of a model of fewer blocks): an estimate from 2M
# elements or more, at an eighth of the cost of reading every block once more.
SPREAD_BLOCKS = 8

Groups = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class _Block:
    dtype: str
    a: int  # element range [a, b) of the dtype group
    b: int


def _split(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, BLOCK):
        yield a, min(a + BLOCK, stop)


def _cut(pairs: list[tuple[Groups, float]], blk: _Block) -> list[tuple[torch.Tensor, float]]:
    return [(s[blk.dtype][blk.a : blk.b], w) for s, w in pairs]


def _copy_block(target: torch.Tensor, copies: Sequence[Groups], blk: _Block) -> None:
    with torch.no_grad():
        for copy in copies:
            copy[blk.dtype][blk.a : blk.b].copy_(target[blk.a : blk.b])


def _change_into(
    d: torch.Tensor, target: torch.Tensor, pairs: list[tuple[Groups, float]], blk: _Block
) -> None:
    """`d` <- the block's averaged change of the round: the mean of the states minus the
    reference."""
    _running_mean_into(d, _cut(pairs, blk))
    d.sub_(target[blk.a : blk.b])


def _nesterov(
    d: torch.Tensor, v: torch.Tensor, ref: torch.Tensor, mu: float, lr: float, scale: float
) -> None:
    """One Nesterov step of a block: v <- mu * v + d, then ref += scale * d + lr * mu * v
    (`scale` is lr but where the adaptive rule takes more of the change)."""
    torch.add(d, v, alpha=mu, out=v)
    if scale != lr:
        ref.add_(d, alpha=scale)
        ref.add_(v, alpha=lr * mu)
        return
    d.add_(v, alpha=mu)  # the look-ahead
    ref.add_(d, alpha=lr)


def _mean_block(target: torch.Tensor, pairs: list[tuple[Groups, float]], blk: _Block) -> None:
    with torch.no_grad():  # grad mode is per thread: each lane sets its own
        _running_mean_into(target[blk.a : blk.b], _cut(pairs, blk))


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
    """Merges a round's published states into the reference groups, in place.

    Args:
        workers: the threads the blocks run on (default: the process's, one per core).
    """

    def __init__(
        self, config: OuterConfig, layout: FlatLayout, workers: MergeWorkers | None = None
    ) -> None:
        self.config = config
        self._workers = workers
        self._spans = stepped_spans(layout)
        self._momentum: dict[str, torch.Tensor] = {}
        self._scratch = threading.local()  # nesterov: one block of the change per lane
        self._change: dict[str, torch.Tensor] = {}  # adaptive, when no copy is a state
        self.last_scale = 1.0  # adaptive: the momentum's share kept at the last round
        self.noise: float | None = None  # adaptive: the smoothed noise share (`outer_rule`)

    @property
    def plain(self) -> bool:
        c = self.config
        return c.name == "average" or (c.lr == 1.0 and c.momentum == 0.0)

    def step(
        self,
        reference: Groups,
        states: Sequence[Groups],
        samples: Sequence[int],
        copies: Sequence[Groups] = (),
    ) -> None:
        """Merge `states` (weighted by `samples`) into `reference` and take the outer step;
        each finished block is also copied into `copies` while it is in cache (they may be
        some of `states`: a block of them is read before it is overwritten).

        The blocks run on every core (the workers): the round's functions wait at the barrier
        meanwhile. Each block's result does not depend on the lane that computed it, and
        the adaptive step's dot products are summed in block order, so the result is the
        same bits on any number of cores."""
        if len(states) != len(samples):
            raise ValueError("one sample count per state is needed")
        pairs = [(s, w) for s, w in zip(states, normalized_weights(samples), strict=True) if w > 0]
        floats = {}
        with torch.no_grad():
            for dtype, target in reference.items():
                if target.is_floating_point():
                    floats[dtype] = target
                else:  # integer counters: a handful of elements, rounded means
                    weighted_average_into({dtype: target}, states, samples)
                    for copy in copies:
                        copy[dtype].copy_(target)
        spans = {} if self.plain else {d: self._spans.get(d, []) for d in floats}
        averaged = [
            _Block(dtype, a, b)
            for dtype, target in floats.items()
            for start, stop in gaps(spans.get(dtype, []), target.numel())
            for a, b in _split(start, stop)
        ]
        stepped = [
            _Block(dtype, a, b)
            for dtype in floats
            for start, stop in spans.get(dtype, [])
            for a, b in _split(start, stop)
        ]
        workers = self._workers if self._workers is not None else merge_workers()

        def run(fn: Callable[[_Block], Any], blocks: list[_Block], last: bool = True) -> list:
            def block(blk: _Block) -> Any:
                out = fn(blk)
                if last:
                    _copy_block(floats[blk.dtype], copies, blk)
                return out

            return workers.map(block, blocks)

        run(lambda blk: _mean_block(floats[blk.dtype], pairs, blk), averaged)
        if not stepped:
            return
        mu = self.config.momentum
        # Adaptive keeps the round's whole change: in the first state's own memory when the
        # new model is copied there anyway (each block is read before it is written: no
        # buffer, and no cache line fetched only to be overwritten), else in a buffer.
        in_first = any(copy is pairs[0][0] for copy in copies)
        change = pairs[0][0] if in_first else self._change
        for dtype in dict.fromkeys(blk.dtype for blk in stepped):  # made here, not in workers
            if mu > 0:
                self._buffer(dtype, floats[dtype])
            have = self._change.get(dtype)
            if (
                self._adaptive
                and not in_first
                and (have is None or have.numel() != floats[dtype].numel())
            ):
                self._change[dtype] = torch.zeros_like(floats[dtype])
        if not self._adaptive:
            run(lambda blk: self._step_block(floats[blk.dtype], pairs, blk), stepped)
            return
        # the noise share's blocks (none for one function: it has no noise to tell)
        read = set(stepped[:: -(-len(stepped) // SPREAD_BLOCKS)]) if len(pairs) > 1 else set()
        parts = run(
            lambda blk: self._change_block(floats[blk.dtype], change, pairs, blk, blk in read),
            stepped,
            False,
        )
        sums = total(parts)  # in block order: the same float sums on any number of lanes
        terms, self.noise = adaptive_step(
            self.config.lr, mu, sums, sum(w * w for _, w in pairs), self.noise
        )
        self.last_scale = terms.kept / mu
        run(lambda blk: self._adaptive_block(floats[blk.dtype], change, terms, blk), stepped)

    @property
    def _adaptive(self) -> bool:
        return self.config.name == "adaptive" and self.config.momentum > 0

    def _change_block(
        self,
        target: torch.Tensor,
        change: Groups,
        pairs: list[tuple[Groups, float]],
        blk: _Block,
        read: bool,
    ) -> RoundSums:
        """Adaptive, pass 1: the block's averaged change `d`, kept in `change`, and its
        share of the round's sums (`outer_rule.RoundSums`; with `read`, the functions'
        squared changes too)."""
        d = change[blk.dtype][blk.a : blk.b]
        v = self._momentum[blk.dtype][blk.a : blk.b]
        ref = target[blk.a : blk.b]
        with torch.no_grad():
            spread = 0.0
            if read:
                scratch = self._block_scratch(target)[: blk.b - blk.a]
                for state, weight in _cut(pairs, blk):  # before `d` may overwrite the first
                    torch.sub(state, ref, out=scratch)
                    spread += weight * float(torch.dot(scratch, scratch))
            _change_into(d, target, pairs, blk)
            dv, dd, vv = (float(torch.dot(a, b)) for a, b in ((d, v), (d, d), (v, v)))
            return RoundSums(dv, dd, vv, spread, dd if read else 0.0)

    def _adaptive_block(
        self, target: torch.Tensor, change: Groups, terms: StepTerms, blk: _Block
    ) -> None:
        """Adaptive, pass 2: the Nesterov step with the round's `terms`."""
        d = change[blk.dtype][blk.a : blk.b]
        v = self._momentum[blk.dtype][blk.a : blk.b]
        with torch.no_grad():
            _nesterov(d, v, target[blk.a : blk.b], terms.kept, self.config.lr, terms.scale)

    def _block_scratch(self, target: torch.Tensor) -> torch.Tensor:
        """A block of scratch memory for the calling lane."""
        scratch = getattr(self._scratch, "block", None)
        if scratch is None or scratch.numel() < BLOCK or scratch.dtype != target.dtype:
            scratch = self._scratch.block = torch.empty(BLOCK, dtype=target.dtype)
        return scratch

    def _step_block(
        self, target: torch.Tensor, pairs: list[tuple[Groups, float]], blk: _Block
    ) -> None:
        """Nesterov (or plain SGD for momentum 0) on one block, in one pass."""
        lr, mu = self.config.lr, self.config.momentum
        scratch = self._block_scratch(target)
        with torch.no_grad():
            ref = target[blk.a : blk.b]
            d = scratch[: blk.b - blk.a]
            _change_into(d, target, pairs, blk)
            if mu == 0:
                ref.add_(d, alpha=lr)
                return
            _nesterov(d, self._momentum[blk.dtype][blk.a : blk.b], ref, mu, lr, lr)

    def _buffer(self, dtype: str, target: torch.Tensor) -> torch.Tensor:
        buffer = self._momentum.get(dtype)
        if buffer is None:
            buffer = self._momentum[dtype] = torch.zeros_like(target)
        return buffer

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The momentum buffers, keyed `momentum.<dtype>` (empty before the first step),
        and `noise`, the adaptive step's smoothed noise share, once measured."""
        state = {f"momentum.{dtype}": t.clone() for dtype, t in self._momentum.items()}
        return {**state, **noise_state(self.noise)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        momentum = {}
        noise = None
        for key, tensor in state.items():
            kind, _, dtype = key.partition(".")
            if key == NOISE_KEY:
                noise = float(tensor)
            elif kind != "momentum" or not dtype:
                raise ValueError(f"unknown outer optimizer state {key!r}")
            else:
                momentum[dtype] = tensor.detach().clone().reshape(-1)
        self._momentum, self.noise = momentum, noise
