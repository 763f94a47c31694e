"""Request and response shapes of the kubeml API, with the 2021 defaults."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field, field_validator


class OptimizerState(str, Enum):
    """What happens to optimizer state (momentum) between K-AVG rounds of one invocation.

    `reset` rebuilds the optimizer every round, as KubeML 2021 did. `keep` builds it once
    per invocation and keeps its state across the rounds of the epoch; parameters are
    overwritten in place with the merged model, so the optimizer keeps pointing at them.
    """

    RESET = "reset"
    KEEP = "keep"


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.STOPPED)


class TrainRequest(BaseModel):
    """A train task. Defaults are those of the 2021 CLI; the REST API applies the same."""

    function: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    epochs: int = Field(default=1, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=0.01, gt=0)
    parallelism: int = Field(default=2, gt=0)
    static: bool = False
    k: int = Field(default=-1, description="local steps per round; -1 = once per epoch")
    validate_every: int = Field(default=0, ge=0, description="0 = only at the end")
    goal_accuracy: float = Field(default=100.0, gt=0, le=100)
    seed: int = Field(default=0, ge=0)
    optimizer_state: OptimizerState = OptimizerState.KEEP

    @field_validator("k")
    @classmethod
    def _check_k(cls, k: int) -> int:
        if k == 0 or k < -1:
            raise ValueError("K must be -1 (average once per epoch) or a positive number of steps")
        return k


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    val_loss: float | None = None
    accuracy: float | None = None
    parallelism: int
    epoch_duration_s: float
    samples_per_s: float
    rounds: int


class TaskInfo(BaseModel):
    id: str
    request: TrainRequest
    state: TaskState
    parallelism: int
    function_sha256: str | None = None
    epoch: int = 0
    round: int = 0
    train_loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    error: str | None = None
    traceback: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class History(BaseModel):
    task_id: str
    request: TrainRequest
    state: TaskState
    epochs: list[EpochRecord] = Field(default_factory=list)


class DatasetInfo(BaseModel):
    name: str
    train_size: int
    test_size: int
    feature_shape: list[int]
    feature_dtype: str
    label_dtype: str
    created_at: datetime


class FunctionInfo(BaseModel):
    name: str
    sha256: str
    created_at: datetime
    updated_at: datetime


class InferRequest(BaseModel):
    data: list[Any]


class LogLine(BaseModel):
    index: int
    time: datetime
    source: str  # "job" or "function-<func_id>"
    message: str
