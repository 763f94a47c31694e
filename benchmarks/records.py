"""What a benchmark run is asked to do (`Workload`) and what each row measured (`RowResult`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    """One workload of a run (see `benchmarks.specs`), at one seed."""

    data_dir: Path  # train_x.npy ... test_y.npy, written once per run
    train_size: int
    test_size: int
    name: str = "fashion"
    function_file: str = "benchmarks/functions/lenet_fashion_default.py"  # from the root
    function: str = "lenet"  # the name kubeml deploys it under
    dataset: str = "fashion"  # the dataset name the function file reads
    epochs: int = 8
    goal_accuracy: float = 87.0
    batch_size: int = 64  # per worker
    lr: float = 0.01
    seed: int = 0
    threads: int = 2  # in total, for every row


@dataclass
class EpochLog:
    """One epoch of one row. `elapsed_s` runs from the start of training to the end of this
    epoch's evaluation; `train_s` covers training only (no evaluation)."""

    epoch: int
    train_s: float
    samples: int
    train_loss: float
    accuracy: float
    elapsed_s: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_s if self.train_s > 0 else 0.0


@dataclass
class RowResult:
    """One row of the table. `startup_s` runs from the row's start (nothing running yet) to
    the start of training: processes, process groups, Ray, kubeml's engine and upload."""

    name: str
    framework: str  # kubeml | pytorch | ddp | ddp-local-sgd | ray
    key: str = ""  # the row's id on the command line (`--rows`)
    parallelism: int = 1
    k: int | None = None
    startup_s: float = 0.0
    epochs: list[EpochLog] = field(default_factory=list)
    wall_s: float = 0.0  # the whole row, teardown included
    goal_accuracy: float = 87.0
    skipped: str | None = None
    notes: str = ""
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute load at the row's start, end
    repeat: int = 0  # which pass over the rows (`--repeat`)

    @property
    def goal_epoch(self) -> EpochLog | None:
        return next((e for e in self.epochs if e.accuracy >= self.goal_accuracy), None)

    @property
    def time_to_goal_s(self) -> float | None:
        """From the start of training to the evaluation that first reached the goal."""
        epoch = self.goal_epoch
        return epoch.elapsed_s if epoch else None

    @property
    def wall_to_goal_s(self) -> float | None:
        """As `time_to_goal_s`, plus start-up."""
        t = self.time_to_goal_s
        return None if t is None else self.startup_s + t

    @property
    def user_time_to_goal_s(self) -> float | None:
        """What a user waits for: kubeml from the submit to a running server (its start-up
        was paid once, before); a peer from its process start (`wall_to_goal_s`)."""
        return self.time_to_goal_s if self.framework == "kubeml" else self.wall_to_goal_s

    @property
    def median_samples_per_s(self) -> float | None:
        rates = [e.samples_per_s for e in self.epochs]
        return statistics.median(rates) if rates else None

    @property
    def final_accuracy(self) -> float | None:
        return self.epochs[-1].accuracy if self.epochs else None

    def summary(self) -> dict[str, object]:
        return {
            "key": self.key,
            "name": self.name,
            "framework": self.framework,
            "parallelism": self.parallelism,
            "k": self.k,
            "skipped": self.skipped,
            "startup_s": self.startup_s,
            "time_to_goal_s": self.time_to_goal_s,
            "wall_to_goal_s": self.wall_to_goal_s,
            "user_time_to_goal_s": self.user_time_to_goal_s,
            "epochs_run": len(self.epochs),
            "goal_epoch": self.goal_epoch.epoch if self.goal_epoch else None,
            "median_samples_per_s": self.median_samples_per_s,
            "final_accuracy": self.final_accuracy,
            "wall_s": self.wall_s,
            "notes": self.notes,
            "load_average_start_end": self.load_average,
            "repeat": self.repeat,
            "epochs": [{**e.__dict__, "samples_per_s": e.samples_per_s} for e in self.epochs],
        }
