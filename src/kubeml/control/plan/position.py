"""Where a train task stands: the epoch, the merged rounds, and every lane's exact sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubeml.control.plan.chunks import epoch_orders, resplit


@dataclass(eq=False)
class Lane:
    """One function's part of an epoch: the samples it trains, in order, and how many of
    them are merged into the reference model."""

    order: np.ndarray
    done: int = 0

    @property
    def remaining(self) -> np.ndarray:
        return self.order[self.done :]

    @property
    def finished(self) -> bool:
        return self.done >= len(self.order)


@dataclass
class Position:
    """The state a train task can continue from exactly, after any merged round.

    A sample counts as trained only once the round that trained it is merged, so a
    function lost mid-round gives its round back and nothing is trained twice. `lanes[i]`
    is what function i trains; `resplit` redistributes every lane's remaining samples
    over a new N (a lost function, or a resize) without changing their order.
    """

    epoch: int
    lanes: list[Lane]
    seed: int = 0
    round: int = 0  # rounds merged this epoch
    samples: int = 0  # merged this epoch
    loss_sum: float = 0.0  # of the merged batches this epoch
    batches: int = 0
    elapsed_s: float = 0.0  # training time of this epoch before the current run
    failures: int = 0  # functions lost this epoch
    retries: int = 0  # rounds replayed on a fresh worker this epoch
    path: list[int] = field(default_factory=list)  # the N of each stretch of this epoch
    trained: list[np.ndarray] = field(default_factory=list, repr=False)  # this run, merged

    @classmethod
    def start(
        cls, n_samples: int, parallelism: int, seed: int, epoch: int, chunk_samples: int = 0
    ) -> Position:
        """The start of `epoch`: `chunk_samples` is the dataset's stored chunk (the unit
        the epoch's order shuffles; 0: the smallest, 64)."""
        orders = epoch_orders(n_samples, parallelism, seed, epoch, chunk_samples)
        lanes = [Lane(o) for o in orders]
        return cls(epoch=epoch, lanes=lanes, seed=seed)

    @property
    def parallelism(self) -> int:
        return len(self.lanes)

    @property
    def finished(self) -> bool:
        return all(lane.finished for lane in self.lanes)

    def live(self) -> list[int]:
        """The lanes with samples left: the functions of the next round."""
        return [i for i, lane in enumerate(self.lanes) if not lane.finished]

    def advance(self, func_id: int, samples: int, loss_sum: float, batches: int) -> None:
        """Count one function's merged round: its next `samples` samples are trained."""
        lane = self.lanes[func_id]
        samples = min(samples, len(lane.order) - lane.done)
        self.trained.append(lane.order[lane.done : lane.done + samples])
        lane.done += samples
        self.samples += samples
        self.loss_sum += loss_sum
        self.batches += batches

    def resplit(self, parallelism: int) -> None:
        """Spread the samples left this epoch over `parallelism` lanes, keeping their order."""
        remaining = [lane.remaining for lane in self.lanes]
        self.lanes = [Lane(order) for order in resplit(remaining, parallelism)]

    def trained_samples(self) -> np.ndarray:
        """The samples merged in this run, in merge order (tests check exactly-once)."""
        return np.concatenate(self.trained) if self.trained else np.empty(0, dtype=np.int64)

    # -- durable form (only what `torch.load(weights_only=True)` accepts) ---------------
    def to_state(self) -> dict[str, Any]:
        import torch

        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "round": self.round,
            "samples": self.samples,
            "loss_sum": self.loss_sum,
            "batches": self.batches,
            "elapsed_s": self.elapsed_s,
            "failures": self.failures,
            "retries": self.retries,
            "path": list(self.path),
            # Whole lanes and how far each got: a resumed function's hooks go on counting
            # their batches from where the lane stood (`first_batch`), not from 0.
            "lanes": [torch.from_numpy(lane.order.astype(np.int32)) for lane in self.lanes],
            "done": [lane.done for lane in self.lanes],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Position:
        done = state.get("done") or [0] * len(state["lanes"])  # older: remaining samples only
        lanes = [
            Lane(t.numpy().astype(np.int64), int(d))
            for t, d in zip(state["lanes"], done, strict=True)
        ]
        fields = ("round", "samples", "loss_sum", "batches", "elapsed_s", "failures", "retries")
        return cls(
            epoch=int(state["epoch"]),
            lanes=lanes,
            seed=int(state["seed"]),
            path=[int(n) for n in state.get("path", [])],  # absent in older checkpoints
            **{name: state[name] for name in fields},
        )
