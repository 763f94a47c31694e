"""Parallelism policies: how many functions (N) the next epoch of a task gets."""

from __future__ import annotations

from abc import ABC, abstractmethod


class ParallelismPolicy(ABC):
    """Chooses N for the next epoch from the last epoch's measurements."""

    @abstractmethod
    def next_parallelism(self, current: int, epoch_duration_s: float, capacity: int) -> int: ...


class StaticPolicy(ParallelismPolicy):
    """`--static`: N never changes."""

    def next_parallelism(self, current: int, epoch_duration_s: float, capacity: int) -> int:
        return current


class ThroughputPolicy(ParallelismPolicy):
    """The 2021 KubeML policy, per task.

    The first epoch's time becomes the reference. If an epoch took at most `upscale` (1.05)
    times the reference, parallelism helped or did not hurt: try N+1. If it took at least
    `downscale` (1.2) times the reference, it hurt: go to N-1. Otherwise keep N. The
    reference moves to the epoch time of every change. N stays within 1..capacity.
    """

    def __init__(self, upscale: float = 1.05, downscale: float = 1.2) -> None:
        self.upscale = upscale
        self.downscale = downscale
        self.reference_s: float | None = None

    def next_parallelism(self, current: int, epoch_duration_s: float, capacity: int) -> int:
        if self.reference_s is None or epoch_duration_s <= self.reference_s * self.upscale:
            proposal = current + 1
        elif epoch_duration_s >= self.reference_s * self.downscale:
            proposal = current - 1
        else:
            proposal = current
        proposal = max(1, min(capacity, proposal))
        if proposal != current or self.reference_s is None:
            self.reference_s = epoch_duration_s
        return proposal
