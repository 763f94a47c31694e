"""Parallelism policies: how many functions N the next epoch gets (the lr that follows N is
`kubeml.control.job.resize`'s).

Policies are pure: they see one `EpochRecord` per finished epoch and return a decision, so
they are tested with scripted records and no processes.

- `StaticPolicy` (`--static`): N never changes.
- `ThroughputPolicy`: the 2021 idea (grow while an epoch gets no slower, shrink when it
  does), with its two defects fixed: the task's first epoch (cold workers, first touch of
  the shards) is never a measurement, and every epoch, also at capacity, updates the
  samples/s measured at its N, so a task at capacity can shrink again.
- `GoodputPolicy`: picks the N with the highest goodput = samples/s x statistical
  efficiency, where efficiency is the training-loss progress per sample measured at that
  N (Pollux's goodput, estimated from the epoch records alone).

Both adaptive policies explore one step at a time: N+1 while it is unmeasured and N is
the best so far, then the best measured neighbour, and move only for a gain of at least
`margin`. The job caps N at the backend's capacity and the cores its functions run on
(`FunctionBackend.cores`: this machine's, or a Ray cluster's).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from kubeml.api.schemas import EpochRecord


class ParallelismPolicy(ABC):
    """Chooses N for the next epoch from the record of the epoch that just finished."""

    @abstractmethod
    def next_parallelism(self, record: EpochRecord, capacity: int) -> int: ...


class StaticPolicy(ParallelismPolicy):
    def next_parallelism(self, record: EpochRecord, capacity: int) -> int:
        return record.parallelism


@dataclass
class _Explorer:
    """The one-step hill climb both adaptive policies share, over a score per N."""

    margin: float
    scores: dict[int, float] = field(default_factory=dict)

    def decide(self, n: int, capacity: int) -> int:
        n_clamped = max(1, min(n, capacity))
        if n_clamped != n:
            return n_clamped  # capacity shrank under the task
        here = self.scores.get(n)
        if here is None:
            return n  # nothing measured at this N yet: measure it
        below, above = self.scores.get(n - 1), self.scores.get(n + 1)
        if n + 1 <= capacity and above is None and (below is None or here >= below):
            return n + 1  # N is the best so far: see whether one more helps
        best, best_score = n, here * (1 + self.margin)  # moving must gain `margin`
        for candidate, score in ((n - 1, below), (n + 1, above)):
            if score is not None and 1 <= candidate <= capacity and score > best_score:
                best, best_score = candidate, score
        return best


class ThroughputPolicy(ParallelismPolicy):
    """Grow while samples/s grows, shrink when the smaller N was faster (see module)."""

    def __init__(self, margin: float = 0.05, smoothing: float = 0.5) -> None:
        self._explorer = _Explorer(margin)
        self.smoothing = smoothing  # weight of the newest measurement at an N
        self._seen_first = False

    @property
    def rates(self) -> dict[int, float]:
        return dict(self._explorer.scores)

    def next_parallelism(self, record: EpochRecord, capacity: int) -> int:
        n = record.parallelism
        if not self._seen_first:
            self._seen_first = True  # the warm-up epoch measures start-up, not N
            return max(1, min(n, capacity))
        old = self._explorer.scores.get(n)
        rate = record.samples_per_s
        self._explorer.scores[n] = rate if old is None else _blend(old, rate, self.smoothing)
        return self._explorer.decide(n, capacity)


class GoodputPolicy(ParallelismPolicy):
    """Maximise samples/s x statistical efficiency (loss progress per sample) over N.

    Progress of epoch e is `log L(e-1) - log L(e)` (L: mean training loss) per sample
    trained in e. Progress shrinks as training goes on at any N, so epochs measured at
    different times are compared after removing a geometric trend: the per-epoch decay
    is fitted from pairs of epochs at the same N (before any such pair: `prior_decay`).
    The efficiency of N is its trend-free progress per sample relative to the best N's;
    goodput(N) = samples/s(N) x efficiency(N). An epoch whose loss did not fall
    (or rose) gives no progress sample but still updates samples/s.
    """

    def __init__(self, margin: float = 0.05, prior_decay: float = 0.6) -> None:
        self.margin = margin
        self.prior_decay = prior_decay
        self._records: list[EpochRecord] = []
        self._progress: list[tuple[int, int, float]] = []  # (epoch, N, log progress/sample)
        self._rates: dict[int, float] = {}

    def next_parallelism(self, record: EpochRecord, capacity: int) -> int:
        n = record.parallelism
        previous = self._records[-1] if self._records else None
        self._records.append(record)
        if previous is None:
            return max(1, min(n, capacity))  # warm-up epoch, and no progress to measure yet
        old = self._rates.get(n)
        rate = record.samples_per_s
        self._rates[n] = rate if old is None else _blend(old, rate, 0.5)
        samples = record.samples_per_s * record.epoch_duration_s
        if _finite_positive(previous.train_loss, record.train_loss) and samples > 0:
            drop = math.log(previous.train_loss) - math.log(record.train_loss)
            if drop > 0:
                self._progress.append((record.epoch, n, math.log(drop / samples)))
        explorer = _Explorer(self.margin, self.goodput())
        return explorer.decide(n, capacity)

    def decay(self) -> float:
        """Per-epoch factor by which progress per sample shrinks at a fixed N."""
        slopes = []
        for i, (e1, n1, p1) in enumerate(self._progress):
            for e2, n2, p2 in self._progress[i + 1 :]:
                if n1 == n2 and e2 != e1:
                    slopes.append((p2 - p1) / (e2 - e1))
        if not slopes:
            return self.prior_decay
        return min(1.0, max(0.05, math.exp(sorted(slopes)[len(slopes) // 2])))

    def efficiency(self) -> dict[int, float]:
        """Trend-free progress per sample of each measured N, relative to the best N."""
        slope = math.log(self.decay())
        level: dict[int, list[float]] = {}
        for epoch, n, p in self._progress:
            level.setdefault(n, []).append(p - slope * epoch)
        if not level:
            return {}
        means = {n: sum(v) / len(v) for n, v in level.items()}
        top = max(means.values())
        return {n: math.exp(m - top) for n, m in means.items()}

    def goodput(self) -> dict[int, float]:
        eff = self.efficiency()
        return {n: self._rates[n] * e for n, e in eff.items() if n in self._rates}


def _blend(old: float, new: float, weight: float) -> float:
    return (1 - weight) * old + weight * new


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def policy_for(name: str) -> ParallelismPolicy:
    """The policy a `TrainRequest.policy` names (static, throughput or goodput)."""
    policies: dict[str, type[ParallelismPolicy]] = {
        "static": StaticPolicy,
        "throughput": ThroughputPolicy,
        "goodput": GoodputPolicy,
    }
    if name not in policies:
        raise ValueError(f"policy must be one of {sorted(policies)}, not {name!r}")
    return policies[name]()
