"""Pydantic schemas shared by the control plane, the client and the CLI (no heavy imports)."""

from kubeml.api.schemas import (
    DatasetInfo,
    EpochRecord,
    FunctionInfo,
    History,
    InferRequest,
    LogLine,
    OptimizerState,
    TaskInfo,
    TaskState,
    TrainRequest,
)

__all__ = [
    "DatasetInfo",
    "EpochRecord",
    "FunctionInfo",
    "History",
    "InferRequest",
    "LogLine",
    "OptimizerState",
    "TaskInfo",
    "TaskState",
    "TrainRequest",
]
