"""What a job does when a function is lost, fails or hangs: one pure rule, `decide`.

The job turns what it sees (a typed status from `waiting.watch`, or a backend's refusal at
invoke) into an *event*, describes where it stands in a `Situation`, and carries out the
*decision* `decide` returns. Nothing here acts, logs or waits, so every branch is a row of
a table in the unit tests.

| event | when | decision |
| --- | --- | --- |
| `Failed` (user code raised, NaN, a merge error, over its memory limit) | always | `Fail` |
| `Hung` (no heartbeat for the round timeout) | always | `Fail` (the job cancels) |
| `Lost` (a worker died) | the backend does not replace workers, or the task is failing | `Fail` |
| `Lost` in a train round | its lane was already done | `Forget` |
| | the task is stopping | `Forget` |
| | within the retry budget | `Replay` on a fresh worker |
| | past it, others survive | `Drop`: its samples go to the survivors |
| | past it, it was the last one | `Fail` |
| `Lost` in init or validation | within / past the budget | `Replay` / `Fail` |
| `NoReplacement` (no slot for a replay) | others survive / none | `Drop` / `Fail` |
| `NoWorkers` (at invoke, for N functions) | N > 1 and workers are replaceable | `Shrink` to N - 1 |
| | otherwise | `Fail` |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kubeml.errors import BackendError, FunctionTimeoutError


class Phase(str, Enum):
    INIT = "init"
    TRAIN = "train"
    VALIDATE = "validate"


# -- events -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lost:
    """A function's worker died (`BackendError`): its invocation may run again."""

    func_id: int
    error: BaseException


@dataclass(frozen=True)
class Failed:
    """A function ended with an error that will recur (its user code raised)."""

    func_id: int
    error: BaseException


@dataclass(frozen=True)
class Hung:
    """Functions that gave no sign of life for the timeout."""

    func_ids: tuple[int, ...]
    timeout_s: float


@dataclass(frozen=True)
class NoReplacement:
    """The backend had no worker for a lost function's replay."""

    func_id: int
    error: BaseException


@dataclass(frozen=True)
class NoWorkers:
    """The backend had no workers for a gang of `functions` at invoke."""

    functions: int
    error: BaseException


Event = Lost | Failed | Hung | NoReplacement | NoWorkers


@dataclass(frozen=True)
class Situation:
    """What the rule needs to know of the job when the event happened."""

    phase: Phase
    parallelism: int  # the functions the round runs with
    retries: int  # replays started so far in this task
    max_retries: int
    replaces_workers: bool = True  # the backend can start a lost invocation again
    stopping: bool = False  # a stop was requested
    failing: bool = False  # another function's failure already ends the epoch
    lane_done: bool = False  # the lost function had merged all its samples

    @property
    def budget_left(self) -> bool:
        return self.retries < self.max_retries


# -- decisions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Replay:
    """Start the function's invocation again on a fresh worker (one retry spent)."""

    func_id: int


@dataclass(frozen=True)
class Drop:
    """Give up on the function: its remaining samples are re-split over `survivors`."""

    func_id: int
    survivors: int


@dataclass(frozen=True)
class Forget:
    """Nothing to redo: the function is not replaced and costs no retry."""

    func_id: int
    why: str


@dataclass(frozen=True)
class Shrink:
    """Run with `parallelism` functions instead (no workers for more)."""

    parallelism: int


@dataclass(frozen=True)
class Fail:
    """The task fails with `error` (the original one, so the user's traceback stays)."""

    error: BaseException


Decision = Replay | Drop | Forget | Shrink | Fail


def decide(event: Event, s: Situation) -> Decision:
    """The one rule for lost, failed and hung functions (the table in the module doc)."""
    if isinstance(event, Failed):
        return Fail(event.error)
    if isinstance(event, Hung):
        return Fail(
            FunctionTimeoutError(
                f"function(s) {sorted(event.func_ids)} made no progress for "
                f"{event.timeout_s:.0f} s (a hung {_hooks(s.phase)} hook?); the task was stopped"
            )
        )
    if isinstance(event, NoWorkers):
        if event.functions > 1 and s.replaces_workers:
            return Shrink(event.functions - 1)
        return Fail(event.error)
    if isinstance(event, NoReplacement):
        return _drop(event.func_id, event.error, s)
    # Lost
    if not s.replaces_workers or s.failing:
        return Fail(event.error)
    if s.phase is not Phase.TRAIN:
        if s.budget_left:
            return Replay(event.func_id)
        return Fail(
            BackendError(
                f"function {event.func_id} was lost during {s.phase.value} and the task's "
                f"{s.max_retries} retries are spent: {event.error}"
            )
        )
    if s.lane_done:
        return Forget(event.func_id, "its lane was already done")
    if s.stopping:
        return Forget(event.func_id, "the task is stopping")
    if s.budget_left:
        return Replay(event.func_id)
    return _drop(event.func_id, event.error, s)


def _drop(func_id: int, error: BaseException, s: Situation) -> Decision:
    survivors = s.parallelism - 1
    if survivors < 1:
        return Fail(BackendError(f"every function of the task was lost: {error}"))
    return Drop(func_id, survivors)


def _hooks(phase: Phase) -> str:
    return "train/validate" if phase is Phase.TRAIN else phase.value
