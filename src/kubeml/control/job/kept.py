"""The functions' optimizer states a checkpoint keeps (`--optimizer-state keep`).

At a round boundary a live lane's function starts the next round with the state it kept
for that round, and a lane that has finished its epoch has kept the state its next epoch
starts with. A checkpoint holds both, by func_id, so that a resume goes on as the
uninterrupted run would: mid-epoch, and into the next epoch of the same N.
"""

from __future__ import annotations

from typing import Any

from kubeml.control.plan.position import Position
from kubeml.stores.interfaces import FunctionStates


def starts_kept(optimizer_state: str, kept_n: int | None, position: Position) -> bool:
    """Whether the functions at `position` start with the optimizer states kept for it:
    mid-epoch; at an epoch's start, those the last epoch's lanes kept, if of this N."""
    at_start = position.round == 0 and kept_n != position.parallelism
    return optimizer_state == "keep" and not at_start


def gather_kept(
    states: FunctionStates, task_id: str, position: Position
) -> dict[int, dict[str, Any]]:
    """Every lane's kept state at `position`, or none (one was not kept: plain SGD keeps
    nothing, and a lane whose function was lost past its retries kept nothing)."""
    live = position.live()
    done = [f for f in range(position.parallelism) if f not in live]
    kept = states.gather(task_id, position.epoch, position.round, live) if live else {}
    after = states.gather(task_id, position.epoch + 1, 0, done) if done else {}
    if (live and not kept) or (done and not after):
        return {}
    return kept | after


def restore_kept(
    states: FunctionStates, task_id: str, position: Position, kept: dict[int, dict[str, Any]]
) -> bool:
    """Put a checkpoint's states back for `position`'s functions; False, with nothing put,
    where they are not its lanes' (a resume at another N)."""
    live = set(position.live())
    if not kept or not live <= set(kept) <= set(range(position.parallelism)):
        return False
    for func_id, state in kept.items():
        at = (position.epoch, position.round) if func_id in live else (position.epoch + 1, 0)
        states.save(task_id, func_id, *at, state)
    return True
