"""Pydantic schemas shared by the control plane, the client and the CLI (no heavy imports)."""

from kubeml.api.datasets import DatasetInfo
from kubeml.api.schemas import (
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
