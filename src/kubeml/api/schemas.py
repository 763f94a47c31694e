"""Request and response shapes of the kubeml API, with the 2021 defaults and their bounds."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from kubeml.errors import InvalidInputError


def utc_now() -> datetime:
    """The time stamps records carry (`created_at`, `started_at`, ...): aware, in UTC."""
    return datetime.now(timezone.utc)


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)

# Bounds of the request fields; README's "Limits" table lists the same numbers.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_LR = 10.0
MAX_PARALLELISM = 1_024
MAX_K = 1_000_000
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
MAX_CODE_CHARS = 2**20  # a function file of 1 MiB is already far larger than any real one
MAX_INFER_SAMPLES = 65_536
MAX_MEMORY_MB = 2**20  # 1 TiB: the most a function's memory limit (`memory_mb`) may be


def name_error(kind: str, name: object) -> str | None:
    """Why `name` is not a valid function or dataset name, or None when it is."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return None
    return f"invalid {kind} name {name!r}: {NAME_RULE}"


def check_name(kind: str, name: str) -> str:
    """Names are 1-64 characters of letters, digits, `_`, `.`, `-`, starting alphanumeric."""
    problem = name_error(kind, name)
    if problem:
        raise InvalidInputError(problem)
    return name


def _named(kind: str) -> AfterValidator:
    def check(name: str) -> str:
        problem = name_error(kind, name)
        if problem:
            raise ValueError(problem)
        return name

    return AfterValidator(check)


def _int_range(low: int, high: int, meaning: str = "") -> tuple[Any, ...]:
    """An integer in [low, high]: not a bool, not a float; the refusal names the range.

    The check runs before pydantic's own (whose messages name neither the range nor that
    `true` was refused for being a bool); the bounds go into the JSON schema by hand.
    """
    rule = f"must be an integer from {low} to {high}{meaning}"

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(rule)
        return value

    return Field(json_schema_extra={"minimum": low, "maximum": high}), BeforeValidator(check)


def _float_range(low: float, high: float) -> tuple[Any, ...]:
    """A finite number in (low, high]; a JSON integer is a number, a bool or a string is not."""
    rule = f"must be a finite number in ({low:g}, {high:g}]"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(rule)
        if not (math.isfinite(value) and low < value <= high):
            raise ValueError(rule)
        return float(value)

    bounds: dict[str, Any] = {"exclusiveMinimum": low, "maximum": high}
    return Field(json_schema_extra=bounds), BeforeValidator(check)


# The pattern is for the OpenAPI document; `_named` checks it, with a message naming the rule.
_NAME_FIELD = Field(
    max_length=64, description=NAME_RULE, json_schema_extra={"pattern": NAME_PATTERN}
)
FunctionName = Annotated[StrictStr, _NAME_FIELD, _named("function")]
DatasetName = Annotated[StrictStr, _NAME_FIELD, _named("dataset")]
Epochs = Annotated[(int, *_int_range(1, MAX_EPOCHS))]
BatchSize = Annotated[(int, *_int_range(1, MAX_BATCH))]
LearningRate = Annotated[(float, *_float_range(0.0, MAX_LR))]
Parallelism = Annotated[(int, *_int_range(1, MAX_PARALLELISM))]
ValidateEvery = Annotated[(int, *_int_range(0, MAX_EPOCHS, " (0 = only at the end)"))]
GoalAccuracy = Annotated[(float, *_float_range(0.0, 100.0))]


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k == 0 or not -1 <= k <= MAX_K:
        raise ValueError(
            f"K must be -1 (average once per epoch) or a number of local steps from 1 to {MAX_K}"
        )
    return k


LocalSteps = Annotated[
    int, Field(json_schema_extra={"minimum": -1, "maximum": MAX_K}), BeforeValidator(_check_k)
]
Seed = Annotated[(int, *_int_range(0, MAX_SEED))]
MemoryMb = Annotated[(int, *_int_range(1, MAX_MEMORY_MB, " (megabytes)"))]


class OptimizerState(str, Enum):
    """What happens to optimizer state (momentum) between K-AVG rounds.

    `reset` rebuilds the optimizer every round, as KubeML 2021 did. `keep` builds it once
    per invocation and keeps its state across the rounds of the epoch (parameters are
    overwritten in place with the merged model, so the optimizer keeps pointing at them),
    and each lane's next epoch goes on with it while N stays, as a torch loop's does.
    """

    RESET = "reset"
    KEEP = "keep"

    def __str__(self) -> str:
        return self.value


class OuterOptimizerName(str, Enum):
    """How the parameter server applies a round's average (see `kubeml.control.merge.outer`)."""

    AVERAGE = "average"  # the average becomes the reference (KubeML 2021)
    NESTEROV = "nesterov"  # the averaged change is a pseudo-gradient for Nesterov SGD
    ADAPTIVE = "adaptive"  # nesterov, momentum scaled by max(0, cos(change, momentum))


class SyncPrecision(str, Enum):
    """How a sharded round's changes travel (see `kubeml.stores.codecs`)."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"

    def __str__(self) -> str:
        return self.value


MAX_SHARDS = 1024


class LrScaling(str, Enum):
    """How the learning rate follows N: the task's `lr` is one process's (the user's own
    loop's), and each of N functions trains at lr x sqrt(N), lr x N or lr."""

    NONE = "none"
    LINEAR = "linear"
    SQRT = "sqrt"


class PolicyName(str, Enum):
    """How N changes between epochs (see `kubeml.control.tasks.policy`)."""

    STATIC = "static"
    THROUGHPUT = "throughput"
    GOODPUT = "goodput"


def _check_momentum(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a finite number in [0, 1)")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError("must be a finite number in [0, 1)")
    return float(value)


OuterLr = Annotated[(float, *_float_range(0.0, 2.0))]
OuterMomentum = Annotated[
    float,
    Field(json_schema_extra={"minimum": 0, "exclusiveMaximum": 1}),
    BeforeValidator(_check_momentum),
]


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:  # `print(info.state)` says `running`, not `TaskState.RUNNING`
        return self.value

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.STOPPED)


class TrainRequest(BaseModel):
    """A train task. Defaults are the 2021 CLI's, except K (8, was -1) and the outer
    optimizer (adaptive Nesterov, lr 0.7 momentum 0.9, was plain averaging), chosen by measurement
    (docs/performance.md); the REST API applies the same.

    Numbers are strict: `true` is not an epoch count, `2.0` is not a batch size (a JSON
    integer is a fine learning rate), and every float must be finite.
    """

    function: FunctionName
    dataset: DatasetName
    epochs: Epochs = 1
    batch_size: BatchSize = 64
    lr: LearningRate = 0.01
    parallelism: Parallelism = 2
    static: StrictBool = False
    k: LocalSteps = Field(
        default=8, description=f"local steps per round, 1 to {MAX_K}; -1 = once per epoch"
    )
    validate_every: ValidateEvery = Field(default=0, description="0 = only at the end")
    goal_accuracy: GoalAccuracy = 100.0
    seed: Seed = 0
    optimizer_state: OptimizerState = OptimizerState.KEEP
    outer_optimizer: OuterOptimizerName = OuterOptimizerName.ADAPTIVE
    outer_lr: OuterLr = Field(default=0.7, description="nesterov and adaptive; (0, 2]")
    outer_momentum: OuterMomentum = Field(default=0.9, description="nesterov and adaptive; [0, 1)")
    lr_scaling: LrScaling = LrScaling.SQRT
    policy: PolicyName | None = Field(
        default=None, description="null = static if `static`, else throughput"
    )
    max_retries: int = Field(
        default=3, ge=0, description="lost functions replaced per task before N shrinks"
    )
    checkpoint_every_s: float = Field(
        default=60.0, ge=0, description="seconds between mid-epoch checkpoints; 0 = epoch ends only"
    )
    memory_mb: MemoryMb | None = Field(
        default=None,
        description="the most memory each function may use, in MB, enforced by the operating "
        "system where the server can (`server status`); null = the server's default",
    )
    shards: StrictInt | None = Field(
        default=None, ge=0, le=MAX_SHARDS,
        description="parameter shards (ray backend): null = one per node that runs functions "
        "when there are several, else 0; 0 = the central merge; S = S shards",
    )  # fmt: skip
    sync_precision: SyncPrecision = Field(
        default=SyncPrecision.FP32, description="how a sharded round's changes travel"
    )
    overlap: StrictBool = Field(
        default=False,
        description="a sharded round's sync runs beside the next round's local steps, its "
        "outer step landing one round late (a replayed round is then not the same bits)",
    )

    @model_validator(mode="after")
    def _check_policy(self) -> TrainRequest:
        if self.static and self.policy not in (None, PolicyName.STATIC):
            raise ValueError(
                f"static=true keeps N fixed; it contradicts policy {self.policy.value!r}"
            )
        return self

    @property
    def effective_policy(self) -> PolicyName:
        if self.policy is not None:
            return self.policy
        return PolicyName.STATIC if self.static else PolicyName.THROUGHPUT


# Stored records keep a NaN or infinite measurement as the string "NaN"/"Infinity", which
# reads back as the same float: with JSON's null it would no longer parse as a number.
_RECORD = ConfigDict(ser_json_inf_nan="strings")


class EpochRecord(BaseModel):
    model_config = _RECORD

    epoch: int
    train_loss: float
    val_loss: float | None = None
    accuracy: float | None = None
    parallelism: int  # N at the end of the epoch (what validation and the next epoch ran at)
    # N of each stretch when it changed within the epoch, in order (the scheduler took
    # slots back or granted them, or a lost function's samples were re-split): [2, 1, 2].
    # None when the whole epoch ran at `parallelism`.
    parallelism_path: list[int] | None = None
    samples: int | None = None  # trained this epoch (each once: the train set's size)
    epoch_duration_s: float
    samples_per_s: float
    rounds: int
    lr: float | None = None  # the learning rate the functions trained with
    failures: int = 0  # functions lost during the epoch (their worker died)
    retries: int = 0  # of those, replaced on a fresh worker (the others' samples were re-split)

    def ns(self) -> list[int]:
        """N of each stretch of the epoch: `[parallelism]` when it never changed."""
        return self.parallelism_path or [self.parallelism]

    def ns_text(self) -> str:
        """`2`, or `2→1→2` when N changed within the epoch."""
        return "→".join(map(str, self.ns()))


class TaskInfo(BaseModel):
    model_config = _RECORD

    id: str
    request: TrainRequest
    state: TaskState
    parallelism: int
    function_sha256: str | None = None
    # The epoch of the last merged round, from 1 (so, once its first round merged, the
    # epoch in progress; between epochs, the one that ended); 0 before any round.
    epoch: int = 0
    round: int = 0  # rounds merged in that epoch
    train_loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    failures: int = 0  # functions lost so far (their worker died)
    retries: int = 0  # lost functions replaced on a fresh worker
    error: str | None = None
    traceback: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class History(BaseModel):
    model_config = _RECORD

    task_id: str
    request: TrainRequest
    state: TaskState
    function_sha256: str | None = None  # the code that trained the model: infer after a prune
    epochs: list[EpochRecord] = Field(default_factory=list)


class FunctionInfo(BaseModel):
    name: str
    sha256: str
    created_at: datetime
    updated_at: datetime


class InferRequest(BaseModel):
    data: list[Any] = Field(
        min_length=1,
        max_length=MAX_INFER_SAMPLES,
        description=f"the samples to predict, 1 to {MAX_INFER_SAMPLES}",
    )


class LogLine(BaseModel):
    index: int
    time: datetime
    source: str  # "job" or "function-<func_id>"
    message: str


class RoundPoint(BaseModel):
    """One merged K-AVG round, as the progress views draw it."""

    index: int  # position in the task's list of points; poll with `since` = last index + 1
    epoch: int
    round: int
    train_loss: float
    parallelism: int
    samples: int  # trained in this round, by all functions
    samples_per_s: float | None = None  # since the previous round of the epoch
    elapsed_s: float  # since the task (or its resume) started running
    time: datetime


class TaskProgress(BaseModel):
    """A task with its round points and epochs: what `task watch` and /dashboard draw."""

    task: TaskInfo
    rounds_per_epoch: int | None = None  # of the current epoch, at its N, K and batch size
    samples_per_epoch: int | None = None
    rounds: list[RoundPoint] = Field(default_factory=list)
    epochs: list[EpochRecord] = Field(default_factory=list)
