"""Waiting for a job's functions: one loop that turns their futures into typed statuses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from kubeml.control.job.decisions import Failed, Hung, Lost
from kubeml.errors import BackendError
from kubeml.runtime.invocation import InvocationResult

POLL_S = 0.5


@dataclass(frozen=True)
class Finished:
    """A function's invocation returned."""

    func_id: int
    result: InvocationResult


Status = Finished | Lost | Failed | Hung


def watch(
    watched: dict[Future[InvocationResult], int],
    stalled: Callable[[], set[int]],
    timeout_s: float,
) -> Iterator[Status]:
    """Yield each function's status as it happens, until every watched future is done:
    `Finished`, `Lost` (its worker died: a `BackendError`), `Failed` (any other error), or
    `Hung` once `stalled()` names functions (then the loop ends). The caller may add
    futures to `watched` between statuses: a replacement is watched like the others."""
    seen: set[Future[InvocationResult]] = set()
    while True:
        pending = [f for f in watched if f not in seen]
        if not pending:
            return
        done, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
        for future in sorted(done, key=lambda f: watched[f]):
            seen.add(future)
            func_id, error = watched[future], future.exception()
            if error is None:
                yield Finished(func_id, future.result())
            elif isinstance(error, BackendError):
                yield Lost(func_id, error)
            else:
                yield Failed(func_id, error)
        hung = stalled()
        if hung and any(f not in seen for f in watched):
            yield Hung(tuple(sorted(hung)), timeout_s)
            return


def wait_for_the_rest(watched: dict[Future[InvocationResult], int], timeout_s: float) -> None:
    """After a failure: give the other functions (released with "stop") a moment to end."""
    wait(list(watched), timeout=min(timeout_s, 30))
