"""How N changes: one rule for every path (the policy, the scheduler, a lost function, no
workers), so the lr scales and ramps the same way whatever asked. Pure; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_WARMUP_ROUNDS = 4  # rounds of linear lr ramp after a resize (a quarter epoch for K=-1)


def scaled_lr(lr: float, scaling: str, parallelism: int) -> float:
    """The lr each of N functions trains at, for a task whose `lr` is one process's (the
    lr of the user's own loop): lr x N (`linear`), lr x sqrt(N) (`sqrt`) or lr (`none`)."""
    if scaling == "linear":
        return lr * parallelism
    if scaling == "sqrt":
        return lr * math.sqrt(parallelism)
    if scaling == "none":
        return lr
    raise ValueError(f"lr scaling must be none, linear or sqrt, not {scaling!r}")


def warmup_steps(k: int, batches_per_function: int) -> int:
    """Local steps of the lr ramp after a resize: `LR_WARMUP_ROUNDS` rounds of K steps,
    at most the epoch (a quarter of it when K=-1, where one round is the whole epoch)."""
    if k > 0:
        return min(batches_per_function, LR_WARMUP_ROUNDS * k)
    return max(1, batches_per_function // LR_WARMUP_ROUNDS)


@dataclass(frozen=True)
class LrRule:
    """A task's lr as a function of N: `base_lr` for one process, scaled by `scaling`
    (none, linear, sqrt)."""

    base_lr: float
    scaling: str

    def at(self, parallelism: int) -> float:
        return scaled_lr(self.base_lr, self.scaling, parallelism)


@dataclass(frozen=True)
class Resize:
    """A change of N decided by `resize`: the new N, its lr, the lr the next segment ramps
    up from (None: no ramp), and the line for the task's log."""

    parallelism: int
    lr: float
    lr_from: float | None
    line: str


def resize(
    parallelism: int, lr: float, lr_from: float | None, granted: int, rule: LrRule, why: str
) -> Resize | None:
    """From N=`parallelism` (training at `lr`, ramping from `lr_from`) to `granted`
    functions, `why` (for the log); None when N does not change."""
    if granted == parallelism:
        return None
    new_lr = rule.at(granted)
    change = f", lr {lr:g} -> {new_lr:g}" if new_lr != lr else ""
    ramp_from = lr if new_lr != lr else lr_from
    return Resize(granted, new_lr, ramp_from, f"N {parallelism} -> {granted} {why}{change}")
