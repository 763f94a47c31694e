"""A segment: the K-AVG rounds of one epoch at one N, until the epoch ends or N changes."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from kubeml.control.job.barrier import AttemptSync, RoundBarrier
from kubeml.control.job.decisions import (
    Decision,
    Drop,
    Event,
    Fail,
    Failed,
    Forget,
    Hung,
    Lost,
    NoReplacement,
    NoWorkers,
    Phase,
    Replay,
    Shrink,
    Situation,
)
from kubeml.control.job.invocations import train_invocation
from kubeml.control.job.waiting import Finished, wait_for_the_rest, watch
from kubeml.control.plan.chunks import validation_slices
from kubeml.control.plan.position import Position
from kubeml.errors import BackendError, FunctionError, KubeMLError, RoundLostError
from kubeml.runtime.invocation import InvocationResult
from kubeml.runtime.sync import Release, RoundReport

if TYPE_CHECKING:
    from kubeml.control.job.loop import TrainJob


class Segment:
    """Runs the live lanes of `position` in rounds through a `RoundBarrier`: invokes the
    functions, merges each round (`merge`, on the thread of the round's last function),
    and carries out the job's decisions on lost, failed and hung functions. It ends at
    the epoch's end, or at the first round boundary where N is to change (a resize, a
    stop, a dropped function's re-split)."""

    def __init__(self, job: TrainJob, position: Position) -> None:
        self.job, self.position = job, position
        self.func_ids = position.live()
        self.barrier = RoundBarrier(self.func_ids, self.merge)
        self.watched: dict[Future[InvocationResult], int] = {}
        self.started = self.failed = 0
        self.lr_from: float | None = None
        self.start_round = position.round
        self.start_done = {f: position.lanes[f].done for f in self.func_ids}
        self.restored = False

    def run(self) -> None:
        job, state, position = self.job, self.job.state, self.position
        with state.lock:
            # This segment ramps the lr up after a change (a change during it: the next one).
            self.lr_from, state.lr_from = state.lr_from, None
            # Resumed mid-epoch with the functions' states kept: they go on with them.
            self.restored = state.restore_at == position.round
            state.restore_at = None
            state.segment_functions = len(self.func_ids)
            # If this segment ends the epoch and validation is due, its functions score
            # the test set's slices of this N after the last round (`Release.validate`).
            due = job.validation_due(position.epoch)
            state.score_slices = (
                validation_slices(job.test_size, position.parallelism) if due else []
            )
            state.scored = {}
            threads = state.segment_threads = job.threads(len(self.func_ids))
            for func_id in self.func_ids:
                state.attempts[func_id] = state.attempts.get(func_id, -1) + 1
        invocations = [
            train_invocation(job, position, f, threads, self.lr_from, self.restored)
            for f in self.func_ids
        ]
        sync = AttemptSync(self.barrier, state.attempts, self.func_ids)
        try:
            futures = job.services.backend.invoke(invocations, sync=sync, log=job.function_log)
        except BackendError as exc:  # no workers for this N (a lost Ray node)
            n = len(self.func_ids)
            decision = job.decide(NoWorkers(n, exc), self._situation())
            if not isinstance(decision, Shrink):
                raise
            granted = min(job.services.slots.want(decision.parallelism), decision.parallelism)
            job.change_parallelism(granted, f"{at(position)}: no workers for N={n} ({exc})")
            return
        self.watched = dict(zip(futures, self.func_ids, strict=True))
        self.started = len(invocations)
        try:
            self._watch()
        finally:
            job.listener.on_invocations(self.started, self.failed)
        if state.resplit:  # a function was dropped: give its slot back now none runs
            granted = job.services.slots.want(state.parallelism)  # a shrink asked still holds
            job.change_parallelism(granted, f"{at(position)}: the scheduler's shrink")

    def _watch(self) -> None:
        services = self.job.services
        timeout = services.round_timeout_s

        def stalled() -> set[int]:
            return self.barrier.stalled(timeout, services.start_timeout_s)

        for status in watch(self.watched, stalled, timeout):
            if not isinstance(status, Hung):
                self.barrier.ended(status.func_id)
            if isinstance(status, Finished):
                self.job.state.add_phases(status.result)
                if status.result.validation is not None:
                    with self.job.state.lock:
                        self.job.state.scored[status.func_id] = status.result.validation
                continue
            self.failed += int(not isinstance(status, Hung))
            self._carry_out(status, self.job.decide(status, self._situation(status)))
        if -1 in self.barrier.failed:
            cause = self.barrier.failed[-1]
            raise FunctionError(f"merging a round failed: {cause!r}") from cause

    def _situation(self, event: Event | None = None) -> Situation:
        job, state = self.job, self.job.state
        lane_done = False
        if isinstance(event, Lost):
            lane = self.position.lanes[event.func_id]
            lane_done = lane.finished and event.func_id not in self.barrier.live()
        return Situation(
            Phase.TRAIN,
            parallelism=state.parallelism,
            retries=state.retries,
            max_retries=job.request.max_retries,
            replaces_workers=job.services.backend.replaces_workers,
            stopping=state.requests.stopping,
            failing=bool(self.barrier.failed),
            lane_done=lane_done,
        )

    def _carry_out(self, event: Event, decision: Decision) -> None:
        job, state, position = self.job, self.job.state, self.position
        if isinstance(decision, Fail):
            if isinstance(event, Hung):
                self.barrier.abort(event.func_ids[0], decision.error)  # release the waiters
                job.services.backend.cancel(job.task_id)
            else:
                func_id = event.func_id if isinstance(event, Lost | Failed | NoReplacement) else -1
                self.barrier.abort(func_id, decision.error)
                wait_for_the_rest(self.watched, job.services.round_timeout_s)
            raise decision.error
        assert isinstance(event, Lost | NoReplacement)
        func_id, error = event.func_id, event.error
        if isinstance(event, Lost):
            with state.lock:
                position.failures += 1
        if isinstance(decision, Forget):
            job.log_lost(func_id, error, decision.why)
            job.listener.on_function_lost(False)
            if state.requests.stopping:
                self.barrier.drop(func_id)
        elif isinstance(decision, Replay):
            self._replay(func_id, error)
        elif isinstance(decision, Drop):
            why = "past the retry budget" if isinstance(event, Lost) else "no worker to replay it"
            self._drop(func_id, error, decision.survivors, why)

    def _replay(self, func_id: int, error: BaseException) -> None:
        job, state, position = self.job, self.job.state, self.position
        retries = job.request.max_retries
        job.log_lost(func_id, error, f"retry {state.retries + 1}/{retries}")
        with state.lock:
            state.attempts[func_id] += 1
        self.barrier.join(func_id)
        # The replay starts with the optimizer the lost function had at this round: kept
        # when it published the last one (none at the segment's first round, unless the
        # segment itself started from kept states).
        keep = job.request.optimizer_state.value == "keep"
        restore = keep and (position.round > self.start_round or self.restored)
        lane = position.lanes[func_id]
        ramp_done = (lane.done - self.start_done[func_id]) // job.request.batch_size
        inv = train_invocation(
            job, position, func_id, state.segment_threads, self.lr_from, restore, ramp_done
        )
        sync = AttemptSync(self.barrier, state.attempts, [func_id])
        try:
            [future] = job.services.backend.invoke([inv], sync=sync, log=job.function_log)
        except KubeMLError as exc:  # no slot free (a lost Ray node): not a retry
            job.log(f"function {func_id}: no worker for its replacement ({exc})")
            event = NoReplacement(func_id, exc)
            self._carry_out(event, job.decide(event, self._situation(event)))
            return
        with state.lock:
            position.retries += 1
            state.retries += 1
        job.listener.on_function_lost(True)
        job.log(
            f"function {func_id}: replaying round {position.round + 1} from sample "
            f"{lane.done} of {len(lane.order)} on a fresh worker"
        )
        self.watched[future] = func_id
        self.started += 1

    def _drop(self, func_id: int, error: BaseException, survivors: int, why: str) -> None:
        job, position = self.job, self.position
        job.log_lost(func_id, error, why)
        job.listener.on_function_lost(False)
        job.change_parallelism(survivors, f"{at(position)}: function {func_id} was dropped")
        with job.state.lock:
            job.state.resplit = True
        job.log(
            f"function {func_id} dropped: its {len(position.lanes[func_id].remaining)} samples "
            f"are re-split over the {survivors} other function(s) from the next round"
        )
        self.barrier.drop(func_id)  # its slot goes back when the survivors stop (`run`)

    def merge(self, round_index: int, reports: list[RoundReport]) -> Release:
        """The parameter server's step, on the thread of the round's last function: merge
        the round into the reference model, advance the position, and tell the functions
        whether to go on (not when N is to change or the task stops)."""
        job, state, position = self.job, self.job.state, self.position
        with state.lock:
            # The epoch's last round (every lane left ends with it) leaves the model exactly
            # as the functions load it (`settle`), whether or not they score it now.
            ending = {r.func_id for r in reports if r.final} >= set(position.live())
            validate = ending and bool(state.score_slices)
            try:
                in_place = job.server.merge(reports, settle=ending)
            except RoundLostError as exc:
                return self._lost_round(exc)
            before = position.samples
            for r in reports:
                position.advance(r.func_id, r.samples, r.loss_sum, r.batches)
            position.round += 1
            parallelism = state.parallelism
            if ending:
                state.trained_at = time.monotonic()
        batches = sum(r.batches for r in reports)
        loss = sum(r.loss_sum for r in reports) / batches if batches else float("nan")
        samples = position.samples - before
        job.listener.on_round(state.epoch + 1, position.round, loss, parallelism, samples)
        if job.checkpoints.due():
            job.checkpoint(position, background=True)
        wanted = state.requests.peek_resize()
        resize = wanted is not None and wanted[0] != parallelism
        proceed = not (state.requests.stopping or state.resplit or resize)
        threads = self._threads_now() if proceed else 0  # a last round needs none
        return Release(proceed=proceed, in_place=in_place, threads=threads, validate=validate)

    def _lost_round(self, error: RoundLostError) -> Release:
        """The round could not be merged (a parameter shard was lost, and is back as the
        last merged round left it): end the segment without it; the next one trains it
        again from the same position, with the optimizer states kept for it. It counts
        against the retry budget. Called under the state's lock."""
        job, state, position = self.job, self.job.state, self.position
        if state.retries >= job.request.max_retries:
            raise error  # the barrier fails the epoch with it
        state.retries += 1
        position.retries += 1
        job.log(
            f"{at(position)}: round {position.round + 1} lost ({error}); retry "
            f"{state.retries}/{job.request.max_retries}"
        )
        return Release(proceed=False)

    def _threads_now(self) -> int:
        """A new thread share for the segment's functions, when another task started or
        ended since it began (else 0: they keep theirs)."""
        job, state = self.job, self.job.state
        if not job.services.backend.takes_threads or job.services.torch_threads:
            return 0  # the backend sizes them, or they are pinned
        share = job.threads(state.segment_functions)
        with state.lock:
            if share == state.segment_threads:
                return 0
            old, state.segment_threads = state.segment_threads, share
        job.log(f"torch threads per function {old} -> {share} (other tasks)")
        return share


def at(position: Position) -> str:
    """Where a task stands, for the log: a round boundary."""
    return f"at round {position.round} of epoch {position.epoch + 1}"
