"""The relay between the control plane and a function, shared by every backend.

Typed messages (`messages`) cross a backend's transport (a pipe, a Ray actor's stream):
the control side's `drive` loop (`control_side`) answers a function's log lines, round reports
and store requests until its `Done` or `Failed`; on the worker, `run_invocation`
(`function_side`) runs one invocation and sends them through its `Endpoint`; `start_gang`
starts the N invocations of a round at once. A backend supplies only its transport (`pipe`
for a `multiprocessing` connection), its workers and, through `RelayHooks`, what its
stores need.

Room to grow: a per-batch heartbeat (`Progress`) or batched log lines are new message
types (or more `lines` per `LogLines`); `drive` hands each message kind to one branch.
"""

from kubeml.backends.relay.control_side import (
    AsyncControlTransport,
    ControlTransport,
    RelayHooks,
    answer_round,
    drive,
    drive_async,
    resolve,
    start_gang,
)
from kubeml.backends.relay.function_side import Endpoint, FunctionTransport, run_invocation
from kubeml.backends.relay.messages import (
    Answer,
    Done,
    Failed,
    FromFunction,
    Invoke,
    LogLines,
    Progress,
    Publish,
    Released,
    Request,
    Shutdown,
    ToFunction,
)
from kubeml.backends.relay.pipe import PipeTransport

__all__ = [
    "Answer",
    "AsyncControlTransport",
    "ControlTransport",
    "Done",
    "Endpoint",
    "Failed",
    "FromFunction",
    "FunctionTransport",
    "Invoke",
    "LogLines",
    "PipeTransport",
    "Progress",
    "Publish",
    "RelayHooks",
    "Released",
    "Request",
    "Shutdown",
    "ToFunction",
    "answer_round",
    "drive",
    "drive_async",
    "resolve",
    "run_invocation",
    "start_gang",
]
