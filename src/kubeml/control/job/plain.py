"""Init and validation: independent invocations, no rounds; a lost one runs again."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from kubeml.control.job.barrier import PlainSync
from kubeml.control.job.decisions import Fail, Hung, Lost, Phase, Replay, Situation
from kubeml.control.job.invocations import plain_invocation
from kubeml.control.job.waiting import Finished, wait_for_the_rest, watch
from kubeml.control.plan.chunks import validation_slices
from kubeml.runtime.invocation import InvocationResult, Mode

if TYPE_CHECKING:
    from kubeml.control.job.loop import TrainJob


def run_plain(
    job: TrainJob,
    mode: Mode,
    shards: Sequence[tuple[tuple[int, int], ...]],
    threads: int | None = None,
) -> list[InvocationResult]:
    """Run one invocation per shard (init: one; validation: N test slices) and return their
    results by func_id. A lost worker's invocation runs again within the task's retry
    budget (a hook that kills its worker every time must not loop forever); what else
    happens is the job's decision (`decisions.decide`)."""
    services, state = job.services, job.state
    timeout = services.round_timeout_s
    threads = threads or job.threads(len(shards))
    base = plain_invocation(job, mode, len(shards), threads)
    pending = {i: replace(base, func_id=i, ranges=r) for i, r in enumerate(shards)}
    results: dict[int, InvocationResult] = {}
    while pending:
        invocations, sync = list(pending.values()), PlainSync()
        futures = services.backend.invoke(invocations, sync=sync, log=job.function_log)
        watched = dict(zip(futures, [inv.func_id for inv in invocations], strict=True))

        def stalled(sync: PlainSync = sync) -> set[int]:
            limit = timeout if sync.started else max(timeout, services.start_timeout_s)
            return set(pending) if time.monotonic() - sync.last_progress > limit else set()

        failed = 0
        try:
            for status in watch(watched, stalled, timeout):
                if isinstance(status, Finished):
                    results[status.func_id] = status.result
                    del pending[status.func_id]
                    continue
                failed += int(not isinstance(status, Hung))
                situation = Situation(
                    Phase(mode.value),
                    parallelism=len(shards),
                    retries=state.retries,
                    max_retries=job.request.max_retries,
                    replaces_workers=services.backend.replaces_workers,
                )
                decision = job.decide(status, situation)
                if isinstance(status, Lost):
                    retries = job.request.max_retries
                    replay = isinstance(decision, Replay)
                    budget = f"retry {state.retries + int(replay)}/{retries}"
                    if replay or services.backend.replaces_workers:
                        job.log_lost(status.func_id, status.error, budget)
                        with state.lock:
                            state.retries += int(replay)
                        job.listener.on_function_lost(replay)
                if isinstance(decision, Fail):
                    if isinstance(status, Hung):
                        services.backend.cancel(job.task_id)
                    else:
                        wait_for_the_rest(watched, timeout)
                    raise decision.error
        finally:
            job.listener.on_invocations(len(futures), failed)
    return [results[i] for i in sorted(results)]


def validate_epoch(job: TrainJob) -> tuple[float, float]:
    """The epoch's validation accuracy and loss: the test slices its last round's
    functions scored (`Release.validate`), and validation invocations for the rest (a
    function lost meanwhile, or one whose lane ended a round before the others')."""
    state = job.state
    with state.lock:
        # The slices of the epoch's last segment, scored with its threads where missing.
        threads = state.segment_threads if state.score_slices else None
        slices = state.score_slices or validation_slices(job.test_size, state.parallelism)
        scored, state.score_slices, state.scored = dict(state.scored), [], {}
    missing = [i for i, s in enumerate(slices) if s and i not in scored]
    if missing:  # with the threads the functions scored with: the same sums
        redone = run_plain(job, Mode.VALIDATE, [slices[i] for i in missing], threads=threads)
        scored |= dict(zip(missing, redone, strict=True))
    # In slice order, whoever scored each: the float sums do not depend on who finished first.
    results = [scored[i] for i in sorted(scored) if scored[i].samples > 0]
    total = sum(r.samples for r in results)
    accuracy = sum((r.accuracy or 0.0) * r.samples for r in results) / total
    loss = sum((r.loss or 0.0) * r.samples for r in results) / total
    return accuracy, loss
