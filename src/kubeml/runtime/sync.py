"""The sync interface between a function and the parameter server.

A function never calls the parameter server directly: it publishes its weights to the
model store and sends a small `RoundReport` through a `SyncChannel`, which blocks until
the round is merged and answers with a `Release`. Each backend supplies the channel
(a direct call, a pipe to the worker's parent, a Ray actor), so the function path makes
no assumption about where the parameter server runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class RoundReport:
    task_id: str
    func_id: int
    round: int
    samples: int  # trained in this round; the merge weight
    loss_sum: float  # sum of batch losses in this round
    batches: int
    final: bool  # this function's shard is done; it leaves after this round
    handle: Any = None  # model-store handle of the published weights, if the store needs one


@dataclass(frozen=True)
class Release:
    proceed: bool  # False: stop requested or the task failed; the function returns now
    # The merged model was also written into the published weights of every function
    # that trained in this round and goes on (`FunctionModels.load_published_into`).
    in_place: bool = False
    # When not 0: the torch threads to train the next round with (the function's share of
    # the cores changed: another task started or ended meanwhile).
    threads: int = 0
    # The epoch's last round, and validation is due: the model the functions load now is
    # the model itself, and each scores its test slice (`Invocation.validate_ranges`).
    validate: bool = False


class SyncChannel(Protocol):
    def publish(self, report: RoundReport) -> Release:
        """Announce published weights and block until the round is merged."""
        ...

    def progress(self, func_id: int) -> None:
        """A batch is done (the heartbeat: a long round is not a hung one). Cheap enough
        to call per batch; channels that cross a process send at most every 0.5 s."""
        ...


HEARTBEAT_S = 0.5  # the most often a function's heartbeat crosses a process boundary
HEARTBEAT_MAX_S = 5.0


def heartbeat_every(round_timeout_s: float) -> float:
    """How often a function's heartbeat crosses to the control plane: a twentieth of the
    round timeout that judges it hung, from `HEARTBEAT_S` to `HEARTBEAT_MAX_S`. Each one is
    a message per function that the control plane answers: at every 0.5 s, rounds longer
    than that cost it one more message per function and round (docs/cluster.md)."""
    return min(HEARTBEAT_MAX_S, max(HEARTBEAT_S, round_timeout_s / 20))
