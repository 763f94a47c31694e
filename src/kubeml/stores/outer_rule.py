"""The `adaptive` outer step's rule: from a round's measurements, how much of the outer
momentum the step keeps and how far it moves along the round's averaged change. Pure
arithmetic, shared by the central merge (`kubeml.control.merge.outer`) and the shards
(`kubeml.stores.shard_core`); unit-tested on its own.

A round's step, with `d` the sample-weighted mean of the functions' changes and `v` the
outer momentum:

    v <- kept * v + d;   reference <- reference + scale * d + lr * kept * v

Two measurements set `kept` and `scale`:

- the cosine between `d` and `v`: steady progress in one direction keeps the momentum
  (`kept = momentum * cos`, floored at 0), a change that turns away from it drops it;
- the *noise share* of the functions' changes: with `d_i = s + e_i` (a signal every
  function shares, plus noise `e_i` of its own, of mean square e^2), the functions'
  mean squared change over the squared norm of their mean, G = sum w_i |d_i|^2 / |d|^2,
  is (|s|^2 + e^2) / (|s|^2 + e^2 sum w_i^2), so the share of a function's squared
  change that is noise, e^2 / (|s|^2 + e^2) = (G - 1) / (G (1 - sum w_i^2)), is read
  from one round. It is smoothed over rounds (`NOISE_MEMORY`).

When the changes are mostly noise (the ratio e^2 / |s|^2 past `NOISE_RAMP`), averaging
N of them keeps the signal of one function's K steps while the plain loop would have
taken all N·K: the step then ramps to the *sum* of the changes (`scale` up to N, the
momentum dropped), which moves as far as the plain loop would, with the plain loop's
noise. Measured (docs/performance-history.md, session 27): a character LSTM trained
with RMSprop sits at a ratio of 15-40 after its first rounds and needs 7 epochs to its
goal with the average, 4 with the sum, as the plain loop; every other workload of the
harness stays under 6 on the median round and never reaches the ramp's top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NOISE_MEMORY = 0.9  # the smoothed noise share keeps this much of itself each round
NOISE_RAMP = (8.0, 16.0)  # noise-to-signal ratios where the sum's share starts, is whole


@dataclass(frozen=True)
class StepTerms:
    """The two numbers of an outer step: `v <- kept * v + d`, then
    `reference <- reference + scale * d + lr * kept * v`."""

    kept: float
    scale: float


@dataclass(frozen=True)
class RoundSums:
    """A round's sums over the spans that take the outer step (a shard's share of them,
    or the whole model's): d.v, d.d and v.v for the cosine; sum w_i |d_i|^2 over the
    elements read for the noise share (`spread`), and d.d over those same elements
    (`read_dd`: all of them on a shard; a sample of the blocks in a large central merge)."""

    dv: float = 0.0
    dd: float = 0.0
    vv: float = 0.0
    spread: float = 0.0
    read_dd: float = 0.0

    def __add__(self, other: RoundSums) -> RoundSums:
        return RoundSums(
            self.dv + other.dv,
            self.dd + other.dd,
            self.vv + other.vv,
            self.spread + other.spread,
            self.read_dd + other.read_dd,
        )


def total(parts: Sequence[RoundSums]) -> RoundSums:
    """The parts summed in their order (the same float sums wherever it runs)."""
    out = RoundSums()
    for part in parts:
        out = out + part
    return out


def noise_share(sums: RoundSums, weights_sq: float) -> float | None:
    """The share of a function's squared change that is noise, read from one round
    (`weights_sq`: sum w_i^2 of the sample weights, 1/N for N equal functions); None
    when one round cannot tell (a single function, or no change)."""
    if weights_sq >= 1.0 - 1e-9 or sums.read_dd <= 0.0:
        return None
    gain = sums.spread / sums.read_dd
    return min(1.0, max(0.0, (gain - 1.0) / (gain * (1.0 - weights_sq))))


def smoothed(previous: float | None, share: float | None) -> float | None:
    """The noise share carried to the next round: the first measured value, then a mean
    that keeps `NOISE_MEMORY` of itself; a round that cannot tell leaves it as it was."""
    if share is None:
        return previous
    if previous is None:
        return share
    return NOISE_MEMORY * previous + (1.0 - NOISE_MEMORY) * share


def sum_share(noise: float | None) -> float:
    """How far the step goes from the adaptive Nesterov step (0) to the plain sum of
    the changes (1), from the smoothed noise share."""
    if noise is None:
        return 0.0
    if noise >= 1.0:
        return 1.0
    ratio = noise / (1.0 - noise)
    low, high = NOISE_RAMP
    return min(1.0, max(0.0, (ratio - low) / (high - low)))


def cosine_kept(momentum: float, sums: RoundSums) -> float:
    """`momentum` x cos(d, v), clamped to [0, momentum] (all of it before there is any
    momentum)."""
    both = sums.dd > 0 and sums.vv > 0
    cosine = sums.dv / math.sqrt(sums.dd * sums.vv) if both else 1.0
    return momentum * max(0.0, min(1.0, cosine))


def adaptive_step(
    lr: float, momentum: float, sums: RoundSums, weights_sq: float, noise: float | None
) -> tuple[StepTerms, float | None]:
    """The adaptive step's terms for a round, and the smoothed noise share to carry on
    (the caller keeps it only once the round is merged)."""
    noise = smoothed(noise, noise_share(sums, weights_sq))
    q = sum_share(noise)
    kept = cosine_kept(momentum, sums) * (1.0 - q)
    functions = 1.0 / weights_sq if weights_sq > 0 else 1.0
    return StepTerms(kept, lr + (max(functions, lr) - lr) * q), noise


def weights_sq(samples: Sequence[int]) -> float:
    """sum w_i^2 of the sample weights of a round's functions (those that trained)."""
    counted = [s for s in samples if s > 0]
    whole = sum(counted)
    return sum((s / whole) ** 2 for s in counted) if whole > 0 else 1.0


NOISE_KEY = "noise"  # the smoothed noise share in an outer state (a checkpoint's)


def noise_state(noise: float | None) -> dict[str, torch.Tensor]:
    """The smoothed noise share as an outer state entry (none before it is measured)."""
    return {} if noise is None else {NOISE_KEY: torch.tensor(noise, dtype=torch.float64)}
