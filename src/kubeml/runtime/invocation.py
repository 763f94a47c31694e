"""The arguments and the result of one function invocation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Mode(str, Enum):
    """What an invocation is asked to do."""

    INIT = "init"  # build the network, run the user's init, publish the reference model
    TRAIN = "train"  # one epoch on a shard, in K-AVG rounds
    VALIDATE = "validate"  # score a slice of the test set with the reference model
    INFER = "infer"  # predictions of a finished task's model


@dataclass(frozen=True)
class FunctionCode:
    """A deployed function: its name, the hash of its code, and where to read it."""

    name: str
    sha256: str
    path: str
    source: str | None = None  # carried code; workers load it instead of reading `path`


@dataclass(frozen=True)
class Invocation:
    """Everything one invocation needs; picklable, so it crosses processes and Ray."""

    mode: Mode
    task_id: str
    function: FunctionCode
    dataset: str
    func_id: int = 0
    parallelism: int = 1
    k: int = -1
    lr: float = 0.01
    # After a resize the lr ramps linearly from `lr_warmup_from` to `lr` over this many steps.
    lr_warmup_from: float | None = None
    lr_warmup_steps: int = 0
    lr_warmup_offset: int = 0  # steps of the ramp already taken (a replayed round's)
    batch_size: int = 64
    epoch: int = 0
    seed: int = 0
    ranges: tuple[tuple[int, int], ...] = ()  # sample ranges of this function's shard
    order: tuple[int, ...] = ()  # training order, as positions in the shard; () = shuffled
    # Samples per stored chunk of the dataset: the function reads its shard a piece of a
    # few chunks at a time (`runtime/feed.py`); 0 = unknown, the whole shard at once.
    chunk_samples: int = 0
    round: int = 0  # the epoch's round this invocation starts in (a replay, a re-split)
    optimizer_state: str = "keep"
    # Load the optimizer's state kept for `round` (a replay, a resume mid-epoch), so the
    # function goes on with the momentum the lost one had.
    restore_state: bool = False
    first_batch: int = 0  # the batch index, within this function's epoch, of `order`'s first
    # The test slice this function scores once the epoch's last round is merged, if its
    # release says so (`Release.validate`): the epoch's validation without an invocation.
    validate_ranges: tuple[tuple[int, int], ...] = ()
    # The task's first round: the function builds the initial model itself, seeded as the
    # init invocation was, and keeps it instead of reading it where it is the same bits.
    rebuild_init: bool = False
    # A round's sync runs beside the next round's steps where the store can (parameter
    # shards: `FunctionModels.eager`), its outer step reaching the function a round late.
    overlap: bool = False
    threads: int = 1
    heartbeat_s: float = 0.5  # how often the function's heartbeat crosses (`heartbeat_every`)
    memory_mb: int = 0  # the most memory the function may use; 0: the backend's default
    infer_data: list[Any] | None = None
    model_version: str = ""  # of the final model an infer invocation serves; "" never caches

    @property
    def job_id(self) -> str:
        return self.task_id


@dataclass
class InvocationResult:
    func_id: int
    mode: Mode
    samples: int = 0
    loss: float | None = None  # mean train or validation loss
    accuracy: float | None = None  # validation accuracy, percent
    rounds: int = 0
    output: Any = None  # infer output, JSON-able
    # train: seconds spent over its rounds in each phase (`ROUND_PHASES`)
    phases: tuple[float, ...] = ()
    # train: its test slice scored after the epoch's last round (`validate_ranges`), as a
    # validation invocation of that slice would have returned it
    validation: InvocationResult | None = None


# A train round's phases, as a function spends them: read the round's model, the K local
# steps, send its change (publish), wait for the merge (the barrier and the release); and
# where rounds overlap their sync, the sync's seconds hidden behind the next round's steps
# (not part of the round's time: the wait is what the next round did not hide).
ROUND_PHASES = ("load", "steps", "send", "wait", "overlapped")


LogSink = Callable[[str, str], None]  # (source, message)
