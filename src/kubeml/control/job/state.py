"""What a job knows, as one value (`JobState`), and the requests other threads leave for it."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from kubeml.api.schemas import EpochRecord
from kubeml.control.job.decisions import Decision, Event
from kubeml.control.job.resize import Resize
from kubeml.control.plan.position import Position
from kubeml.runtime.invocation import ROUND_PHASES, InvocationResult


class StopCause(str, Enum):
    USER = "user"  # `task stop`: the task ends as stopped
    SHUTDOWN = "shutdown"  # the server is stopping: the next start resumes the task


class Requests:
    """A task's pending stop and resize: the one place where other threads (the API, the
    scheduler, a shutdown) ask anything of a task, from its admission on, before its job
    exists too. The job takes them at round boundaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: StopCause | None = None
        self._resize: tuple[int, str] | None = None

    def stop(self, cause: StopCause = StopCause.USER) -> None:
        """Stop at the next round boundary; a user's stop is never turned into a shutdown's."""
        with self._lock:
            if self._stop is not StopCause.USER:
                self._stop = cause

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    @property
    def stop_cause(self) -> StopCause | None:
        return self._stop

    def resize(self, parallelism: int, reason: str = "") -> None:
        """Run `parallelism` functions from the next round boundary (the last ask wins)."""
        with self._lock:
            self._resize = (parallelism, reason)

    def peek_resize(self) -> tuple[int, str] | None:
        return self._resize

    def take_resize(self) -> tuple[int, str] | None:
        with self._lock:
            resize, self._resize = self._resize, None
            return resize


@dataclass(eq=False)
class JobState:
    """Everything a running job knows and changes: N, the lr and its ramp, the epoch, the
    `Position`, retries and attempts, the pending re-split, the running segment's shape.

    Two threads write it, always holding `lock`: the job's own thread (between rounds, and
    when it carries out a decision on a lost function), and the merge, which runs on the
    thread of the round's last function (`TrainJob._merge`: it may advance `position` and
    change `segment_threads`, nothing else). `requests` is written by other threads under
    its own lock and read here. `log` keeps the last events and decisions, in order.
    """

    parallelism: int
    lr: float
    epoch: int
    requests: Requests = field(default_factory=Requests)
    position: Position | None = None
    lr_from: float | None = None  # set by a change of lr: the next segment ramps from it
    retries: int = 0  # replays started in this task (the retry budget's count)
    attempts: dict[int, int] = field(default_factory=dict)  # func_id -> its current attempt
    resplit: bool = False  # a function was dropped: re-split at the next round boundary
    restore_at: int | None = None  # a resumed mid-epoch round whose functions' states are kept
    kept_n: int | None = None  # the N whose lanes kept the states their next epoch starts with
    segment_functions: int = 1  # functions of the running segment
    segment_threads: int = 1  # torch threads each of them runs
    records: list[EpochRecord] = field(default_factory=list)
    # The epoch's validation as its last round's functions scored it (`Release.validate`):
    # the test slices of the epoch's last N, and the results by slice; the job scores
    # the rest in validation invocations.
    score_slices: list[tuple[tuple[int, int], ...]] = field(default_factory=list)
    scored: dict[int, InvocationResult] = field(default_factory=dict)
    trained_at: float | None = None  # when the epoch's last round was merged (monotonic)
    log: deque[tuple[Event | Resize | str, Decision | None]] = field(
        default_factory=lambda: deque(maxlen=512)
    )
    lock: threading.RLock = field(default_factory=threading.RLock)
    # The epoch's rounds phase by phase (`ROUND_PHASES`): seconds summed over its functions'
    # finished invocations, and how many rounds those ran.
    phases: list[float] = field(default_factory=lambda: [0.0] * len(ROUND_PHASES))
    phase_rounds: int = 0

    def add_phases(self, result: InvocationResult) -> None:
        if result.phases:
            with self.lock:
                self.phases = [a + b for a, b in zip(self.phases, result.phases, strict=True)]
                self.phase_rounds += result.rounds

    def take_phases(self, epoch: int) -> str | None:
        """The log's line on where a function's round went this epoch (None: no train
        invocation finished); starts the next epoch's count."""
        with self.lock:
            phases, rounds = self.phases, self.phase_rounds
            self.phases, self.phase_rounds = [0.0] * len(ROUND_PHASES), 0
        if not rounds:
            return None
        named = zip(ROUND_PHASES, phases, strict=True)
        parts = ", ".join(f"{name} {t / rounds:.3f} s" for name, t in named)
        return f"epoch {epoch}: a function's round, mean over {rounds}: {parts}"

    def apply(self, change: Resize | None) -> None:
        """Take a new N and its lr (from `resize.resize`)."""
        if change is None:
            return
        with self.lock:
            self.parallelism, self.lr, self.lr_from = change.parallelism, change.lr, change.lr_from
            self.log.append((change, None))
