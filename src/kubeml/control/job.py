"""A train job: the K-AVG protocol of one task, from init to the persisted final model."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass, replace
from typing import Protocol

from kubeml.api.schemas import EpochRecord, TaskState, TrainRequest
from kubeml.backends.base import FunctionBackend
from kubeml.control.barrier import AttemptSync, PlainSync, RoundBarrier
from kubeml.control.checkpoint import Checkpoint, CheckpointStore, CheckpointWriter
from kubeml.control.chunks import shard_of, validation_slices
from kubeml.control.outer import OuterConfig
from kubeml.control.parameter_server import ParameterServer
from kubeml.control.policy import ParallelismPolicy, scaled_lr, warmup_steps
from kubeml.control.position import Position
from kubeml.errors import BackendError, FunctionError, FunctionTimeoutError, KubeMLError
from kubeml.runtime.invocation import FunctionCode, Invocation, InvocationResult, Mode
from kubeml.runtime.sync import Release, RoundReport
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.interfaces import ControlModels


class JobListener(Protocol):
    """Where a job reports progress (the engine records it as task state and history)."""

    def on_round(
        self, epoch: int, round_index: int, train_loss: float, parallelism: int, samples: int
    ) -> None: ...

    def on_epoch(self, record: EpochRecord) -> None: ...

    def on_invocations(self, started: int, failed: int) -> None: ...

    def on_function_lost(self, replaced: bool) -> None: ...

    def on_restore(self, records: list[EpochRecord]) -> None: ...


class Slots(Protocol):
    """The job's side of the scheduler: how it asks for function slots and gives them back."""

    def want(self, parallelism: int) -> int:
        """The job's own choice of N (its policy's, or its survivors after a lost
        function): returns the N granted now; freed slots may grow it up to N later."""
        ...

    def settle(self, parallelism: int) -> int:
        """At a round boundary, take the N the scheduler asked for (`request_parallelism`):
        returns the N granted; slots given back go to queued tasks at once."""
        ...

    def busy(self) -> int:
        """The slots every running task holds now, this one's included."""
        ...


@dataclass(frozen=True)
class JobServices:
    backend: FunctionBackend
    datasets: DatasetStore
    models: ControlModels
    log: Callable[[str, str], None]  # (source, message) into this task's log
    slots: Slots
    round_timeout_s: float = 600.0
    checkpoints: CheckpointStore | None = None
    start_timeout_s: float = 120.0  # from invoke to a function's first sign of life


@dataclass(frozen=True)
class JobOutcome:
    state: TaskState
    error: str | None = None
    traceback: str | None = None


class _Stopped(Exception):
    pass


class TrainJob:
    """Runs one train task to its end and never raises: failures become its outcome.

    The protocol (ARCHITECTURE sections 3, 3a): one init invocation publishes the
    reference model; each epoch gives every function a lane of the epoch's sample order
    (`Position`), and the functions train it in K-AVG rounds through a `RoundBarrier`.
    After every merged round the position is exact, so the job can replay a lost
    function's round on a fresh worker, re-split the remaining samples over a new N at
    any round boundary, and checkpoint (epoch ends, every `checkpoint_every_s`, stop).
    Validation runs on N test slices every `validate_every` epochs and after the last.
    """

    def __init__(
        self,
        task_id: str,
        request: TrainRequest,
        function: FunctionCode,
        parallelism: int,
        services: JobServices,
        listener: JobListener,
        policy: ParallelismPolicy,
        start_epoch: int = 0,
        records: Sequence[EpochRecord] = (),
    ) -> None:
        self.task_id = task_id
        self.request = request
        self.function = function
        self.parallelism = parallelism
        self.services = services
        self.listener = listener
        self.policy = policy
        self.start_epoch = start_epoch
        self.stop_requested = threading.Event()
        self._records = list(records)
        self._epoch = start_epoch
        self._position: Position | None = None
        self.server = ParameterServer(task_id, services.models, _outer_config(request))
        self._start_parallelism = parallelism  # lr_scaling is relative to this N
        self._lr = request.lr
        self._lr_from: float | None = None  # set by a resize: the next segment ramps from it
        self._wanted: tuple[int, str] | None = None  # (N, why), applied at the next round
        self._wanted_lock = threading.Lock()
        self._resplit = False  # a lane was dropped: re-split at the next round boundary
        self._segment_functions = self._segment_threads = 1  # the running segment's, and
        # the torch threads each of its functions runs
        self._retries = 0
        self._attempt: dict[int, int] = {}
        self._checkpoints = CheckpointWriter(
            services.checkpoints, task_id, request.checkpoint_every_s, self._log
        )
        info = services.datasets.get(request.dataset)
        self._train_size, self._test_size = info.train_size, info.test_size

    def stop(self) -> None:
        """Ask the job to stop at the next round boundary."""
        self.stop_requested.set()

    def request_parallelism(self, parallelism: int, reason: str = "") -> None:
        """Change N at the next round boundary (the epoch's remaining samples are re-split);
        `reason` (the scheduler's) goes into the task's log."""
        with self._wanted_lock:
            self._wanted = (parallelism, reason)

    # -- the whole task, as a table of contents -------------------------------------------
    def run(self) -> JobOutcome:
        models = self.services.models
        try:
            self._log(
                f"task started: N={self.parallelism}, K={self.request.k}, "
                f"{self.request.epochs} epoch(s) on {self._train_size} samples"
            )
            position = self._initialise()
            for epoch in range(position.epoch, self.request.epochs):
                if position.epoch != epoch:
                    position = self._fresh_position(epoch)
                self._epoch = epoch
                record = self._train_epoch(position)
                models.save_final(self.task_id)
                if self._validation_due(epoch):
                    record = self._validate(record)
                self._records.append(record)
                self._checkpoint(self._fresh_position(epoch + 1))
                self.listener.on_epoch(record)
                self._log(_describe(record))
                if self.stop_requested.is_set():
                    raise _Stopped
                if record.accuracy is not None and record.accuracy >= self.request.goal_accuracy:
                    self._log(f"goal accuracy {self.request.goal_accuracy}% reached")
                    break
                if epoch + 1 < self.request.epochs:
                    self._rescale(record)
            self._log("task finished")
            self._checkpoints.delete()
            return JobOutcome(TaskState.SUCCEEDED)
        except _Stopped:
            self._log("task stopped on request")
            return JobOutcome(TaskState.STOPPED)
        except KubeMLError as exc:
            self._log(f"task failed: {exc}")
            if exc.details:
                self._log(exc.details.rstrip())
            return JobOutcome(TaskState.FAILED, str(exc), exc.details)
        except Exception as exc:
            details = traceback.format_exc()
            self._log(f"task failed: internal error {exc!r}\n{details}")
            return JobOutcome(TaskState.FAILED, f"internal error: {exc!r}", details)
        finally:
            self._checkpoints.join()
            models.clear_task(self.task_id)

    # -- phases ----------------------------------------------------------------------------
    def _initialise(self) -> Position:
        models, store = self.services.models, self.services.checkpoints
        checkpoint = store.load(self.task_id) if store is not None else None
        if checkpoint is not None:
            models.write_reference(self.task_id, checkpoint.model)
            self._records = list(checkpoint.records)
            self.server.load_state_dict(checkpoint.outer_state)
            self._checkpoints.sequence = checkpoint.sequence + 1
            self.listener.on_restore(list(self._records))
            self._log(f"resuming from the checkpoint at {checkpoint.label}")
            position = checkpoint.position
            if position.round == 0 and position.samples == 0:
                return self._fresh_position(position.epoch)  # with today's N
            return position
        if self.start_epoch > 0 and models.has_final(self.task_id):
            # A task from before checkpoints: the model of its last completed epoch.
            models.write_reference(self.task_id, models.load_final(self.task_id))
            self._log(f"resuming from epoch {self.start_epoch}")
            return self._fresh_position(self.start_epoch)
        # Start all N workers now, not one for init and the rest at the first epoch, so
        # every function of the first round starts together (a cold worker costs ~1 s).
        self.services.backend.warm(self.parallelism)
        # Init runs with a training function's share of the cores (a backend that sizes
        # workers itself, Ray, gives it its worker's).
        self._run_plain(Mode.INIT, [()], threads=self._threads(self.parallelism))
        return self._fresh_position(0)

    def _fresh_position(self, epoch: int) -> Position:
        return Position.start(self._train_size, self.parallelism, self.request.seed, epoch)

    def _train_epoch(self, position: Position) -> EpochRecord:
        self._position = position
        started = time.monotonic()
        merged_before = position.samples
        path = position.path  # checkpointed with the position: a resume continues it
        while not position.finished:
            if self.stop_requested.is_set():
                position.elapsed_s += time.monotonic() - started
                self._checkpoint(position)
                # The model as it stands, for inference; resume reads the checkpoint.
                self.services.models.save_final(self.task_id)
                self._log(f"stopped at epoch {position.epoch + 1}, round {position.round}")
                raise _Stopped
            self._apply_resize(position)
            if not path or path[-1] != self.parallelism:
                path.append(self.parallelism)
            self._run_segment(position)
            self._lr_from = None  # the lr ramped up after a resize in that segment
        run_s = time.monotonic() - started
        duration = position.elapsed_s + run_s
        return EpochRecord(
            epoch=position.epoch + 1,
            train_loss=position.loss_sum / position.batches if position.batches else float("nan"),
            parallelism=self.parallelism,
            parallelism_path=list(path) if len(path) > 1 else None,
            samples=position.samples,
            epoch_duration_s=duration,
            samples_per_s=(position.samples - merged_before) / run_s if run_s > 0 else 0.0,
            rounds=position.round,
            failures=position.failures,
            retries=position.retries,
            lr=self._lr,
        )

    def _apply_resize(self, position: Position) -> None:
        """Between two rounds: take a requested N, or shrink to the survivors of a drop."""
        with self._wanted_lock:
            wanted, self._wanted = self._wanted, None
        if wanted is not None:
            granted = self.services.slots.settle(wanted[0])  # also when unchanged: it answers
            where = _at(position)
            self._set_parallelism(granted, f"{where}: {wanted[1]}" if wanted[1] else where)
        self._resplit = False
        if position.parallelism != self.parallelism:
            position.resplit(self.parallelism)

    def _run_segment(self, position: Position) -> None:
        """Rounds of the live lanes, until the epoch ends or a round asks for a re-split."""
        func_ids = position.live()
        barrier = RoundBarrier(func_ids, self._merge)
        self._segment_functions = len(func_ids)
        threads = self._segment_threads = self._threads(len(func_ids))
        for func_id in func_ids:
            self._attempt[func_id] = self._attempt.get(func_id, -1) + 1
        invocations = [self._train_invocation(position, f, threads) for f in func_ids]
        sync = AttemptSync(barrier, self._attempt, func_ids)
        try:
            futures = self.services.backend.invoke(invocations, sync=sync, log=self._function_log)
        except BackendError as exc:  # no workers for this N (a lost Ray node): one fewer
            if len(func_ids) == 1 or not self.services.backend.replaces_workers:
                raise
            granted = min(self.services.slots.want(len(func_ids) - 1), len(func_ids) - 1)
            where = _at(position)
            self._set_parallelism(granted, f"{where}: no workers for N={len(func_ids)} ({exc})")
            return
        watched = dict(zip(futures, func_ids, strict=True))
        tally = {"started": len(invocations), "failed": 0}
        try:
            self._watch(watched, barrier, position, tally)
        finally:
            self.listener.on_invocations(tally["started"], tally["failed"])
        if self._resplit:  # a function was dropped: give its slot back now none runs
            granted = self.services.slots.want(self.parallelism)  # a shrink asked still holds
            where = _at(position)
            self._set_parallelism(granted, f"{where}: the scheduler's shrink")

    def _train_invocation(self, position: Position, func_id: int, threads: int) -> Invocation:
        ranges, order = shard_of(position.lanes[func_id].remaining)
        base = self._invocation(Mode.TRAIN, position.parallelism, threads)
        if self._lr_from is not None:  # the first epoch after a resize warms the lr up
            longest = max(len(lane.order) for lane in position.lanes)
            steps = warmup_steps(self.request.k, -(-longest // self.request.batch_size))
            base = replace(base, lr_warmup_from=self._lr_from, lr_warmup_steps=steps)
        return replace(base, func_id=func_id, ranges=ranges, order=order, round=position.round)

    def _merge(self, round_index: int, reports: list[RoundReport]) -> Release:
        """The parameter server's step: merge the round into the reference model."""
        position = self._position
        assert position is not None
        in_place = self.server.merge(reports)
        before = position.samples
        for r in reports:
            position.advance(r.func_id, r.samples, r.loss_sum, r.batches)
        position.round += 1
        batches = sum(r.batches for r in reports)
        loss = sum(r.loss_sum for r in reports) / batches if batches else float("nan")
        samples = position.samples - before
        self.listener.on_round(self._epoch + 1, position.round, loss, self.parallelism, samples)
        if self._checkpoints.due():
            self._checkpoint(position, background=True)
        wanted = self._wanted
        resize = wanted is not None and wanted[0] != self.parallelism
        proceed = not (self.stop_requested.is_set() or self._resplit or resize)
        threads = self._threads_now() if proceed else 0  # a last round needs none
        return Release(proceed=proceed, in_place=in_place, threads=threads)

    def _threads_now(self) -> int:
        """A new thread share for the segment's functions, when another task started or
        ended since it began (else 0: they keep theirs)."""
        if not self.services.backend.takes_threads:
            return 0
        share = self._threads(self._segment_functions)
        if share == self._segment_threads:
            return 0
        self._log(f"torch threads per function {self._segment_threads} -> {share} (other tasks)")
        self._segment_threads = share
        return share

    def _validation_due(self, epoch: int) -> bool:
        every = self.request.validate_every
        last = epoch + 1 == self.request.epochs
        return last or (every > 0 and (epoch + 1) % every == 0)

    def _validate(self, record: EpochRecord) -> EpochRecord:
        slices = validation_slices(self._test_size, self.parallelism)
        results = [r for r in self._run_plain(Mode.VALIDATE, slices) if r.samples > 0]
        total = sum(r.samples for r in results)
        accuracy = sum((r.accuracy or 0.0) * r.samples for r in results) / total
        loss = sum((r.loss or 0.0) * r.samples for r in results) / total
        return record.model_copy(update={"accuracy": accuracy, "val_loss": loss})

    def _rescale(self, record: EpochRecord) -> None:
        if record.parallelism_path:
            return  # the epoch ran at several N: it measured none of them for the policy
        capacity = min(self.services.backend.capacity, self.services.backend.cores())
        wanted = self.policy.next_parallelism(record, capacity)
        if wanted != self.parallelism:
            granted = self.services.slots.want(wanted)
            self._set_parallelism(granted, f"after epoch {record.epoch} (policy)")

    def _set_parallelism(self, granted: int, why: str) -> None:
        """Take a new N (logged), and the lr that follows it (ramped up over the next
        segment's first rounds)."""
        if granted == self.parallelism:
            return
        req = self.request
        lr = scaled_lr(req.lr, req.lr_scaling.value, self._start_parallelism, granted)
        change = f", lr {self._lr:g} -> {lr:g}" if lr != self._lr else ""
        self._log(f"N {self.parallelism} -> {granted} {why}{change}")
        if lr != self._lr:
            self._lr_from, self._lr = self._lr, lr
        self.parallelism = granted

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self, position: Position, *, background: bool = False) -> None:
        """Save the reference model at `position`; mid-epoch ones in the background."""
        if not self._checkpoints.accepts(background):
            return
        models = self.services.models
        views = models.layout(self.task_id).views(models.reference_groups(self.task_id))
        snapshot = Checkpoint(
            position=Position.from_state(position.to_state()),  # a copy, frozen now
            model={k: v.clone() for k, v in views.items()},
            records=list(self._records),
            outer_state=self.server.state_dict(),
        )
        self._checkpoints.write(snapshot, background=background)

    # -- running invocations ---------------------------------------------------------------
    def _invocation(self, mode: Mode, parallelism: int, threads: int) -> Invocation:
        req = self.request
        return Invocation(
            mode=mode,
            task_id=self.task_id,
            function=self.function,
            dataset=req.dataset,
            parallelism=parallelism,
            k=req.k,
            lr=self._lr,
            batch_size=req.batch_size,
            epoch=self._epoch,
            seed=req.seed,
            optimizer_state=req.optimizer_state.value,
            threads=threads,
        )

    def _run_plain(
        self,
        mode: Mode,
        shards: Sequence[tuple[tuple[int, int], ...]],
        threads: int | None = None,
    ) -> list[InvocationResult]:
        """Init or validation: independent invocations; a lost worker's one runs again,
        within the task's retry budget (a hook that kills its worker every time must not
        loop forever)."""
        threads = threads or self._threads(len(shards))
        base = self._invocation(mode, len(shards), threads)
        pending = {i: replace(base, func_id=i, ranges=r) for i, r in enumerate(shards)}
        results: dict[int, InvocationResult] = {}
        while pending:
            invocations, sync = list(pending.values()), PlainSync()
            futures = self.services.backend.invoke(invocations, sync=sync, log=self._function_log)
            try:
                collected = self._collect(futures, sync)
                for inv, result in zip(invocations, collected, strict=True):
                    if isinstance(result, BackendError):
                        retry = self._lost(inv.func_id, result, replaceable=True)
                        self._retried(retry)
                        if not retry:
                            raise BackendError(
                                f"function {inv.func_id} was lost during {mode.value} and "
                                f"the task's {self.request.max_retries} retries are spent: "
                                f"{result}"
                            ) from result
                        continue
                    results[inv.func_id] = result
                    del pending[inv.func_id]
            finally:
                failed = sum(1 for f in futures if f.done() and f.exception() is not None)
                self.listener.on_invocations(len(futures), failed)
        return [results[i] for i in sorted(results)]

    def _collect(
        self, futures: list[Future[InvocationResult]], sync: PlainSync
    ) -> list[InvocationResult | BackendError]:
        """Wait for independent invocations: a lost worker is returned, other errors raise;
        a timeout with no heartbeat from any of them is taken for a hang."""
        timeout = self.services.round_timeout_s
        while True:
            done, pending = wait(futures, timeout=0.5)
            for f in done:
                exc = f.exception()
                lost = isinstance(exc, BackendError) and self.services.backend.replaces_workers
                if exc is not None and not lost:
                    wait(pending, timeout=min(timeout, 30))
                    raise exc
            if not pending:
                return [f.exception() or f.result() for f in futures]  # type: ignore[misc]
            limit = timeout if sync.started else max(timeout, self.services.start_timeout_s)
            if time.monotonic() - sync.last_progress > limit:
                self.services.backend.cancel(self.task_id)
                raise FunctionTimeoutError(
                    f"the functions made no progress for {timeout:.0f} s "
                    "(a hung validate hook?); the task was stopped"
                )

    def _watch(
        self,
        watched: dict[Future[InvocationResult], int],
        barrier: RoundBarrier,
        position: Position,
        tally: dict[str, int],
    ) -> None:
        """Wait for a segment's functions; replace or drop lost ones; fail on the first
        error of user code, or when a function gives no sign of life for the timeout.
        `tally` counts the invocations started and failed."""
        timeout = self.services.round_timeout_s
        while True:
            wait(list(watched), timeout=0.5, return_when=FIRST_EXCEPTION)
            for future in [f for f in watched if f.done() and f.exception() is not None]:
                func_id, exc = watched.pop(future), future.exception()
                tally["failed"] += 1
                replaceable = self.services.backend.replaces_workers
                if not isinstance(exc, BackendError) or barrier.failed or not replaceable:
                    barrier.abort(func_id, exc)  # type: ignore[arg-type]
                    wait(list(watched), timeout=min(timeout, 30))  # released with "stop"
                    raise exc  # type: ignore[misc]
                replacement = self._replace(func_id, exc, barrier, position)
                if replacement is not None:
                    watched[replacement] = func_id
                    tally["started"] += 1
            if all(f.done() for f in watched):
                if -1 in barrier.failed:
                    cause = barrier.failed[-1]
                    raise FunctionError(f"merging a round failed: {cause!r}") from cause
                return
            stalled = barrier.stalled(timeout, self.services.start_timeout_s)
            if stalled:
                self.services.backend.cancel(self.task_id)
                raise FunctionTimeoutError(
                    f"function(s) {sorted(stalled)} made no progress for {timeout:.0f} s "
                    "(a hung train/validate hook?); the task was stopped"
                )

    def _replace(
        self,
        func_id: int,
        error: BackendError,
        barrier: RoundBarrier,
        position: Position,
    ) -> Future[InvocationResult] | None:
        """A lost function: replay its round on a fresh worker, or let the survivors take
        its samples from the next round on. Returns the replacement's future, if any."""
        lane = position.lanes[func_id]
        position.failures += 1
        if lane.finished and func_id not in barrier.live():
            self._lost(func_id, error, replaceable=False, note="its lane was already done")
            self._retried(False)
            return None
        if self.stop_requested.is_set():
            self._lost(func_id, error, replaceable=False, note="the task is stopping")
            self._retried(False)
            barrier.drop(func_id)
            return None
        if self._lost(func_id, error, replaceable=True):
            self._attempt[func_id] += 1
            barrier.join(func_id)
            inv = self._train_invocation(position, func_id, self._segment_threads)
            sync = AttemptSync(barrier, self._attempt, [func_id])
            try:
                [future] = self.services.backend.invoke([inv], sync=sync, log=self._function_log)
            except KubeMLError as exc:  # no slot free (a lost Ray node): not a retry
                self._log(f"function {func_id}: no worker for its replacement ({exc})")
            else:
                position.retries += 1
                self._retried(True)
                self._log(
                    f"function {func_id}: replaying round {position.round + 1} from sample "
                    f"{lane.done} of {len(lane.order)} on a fresh worker"
                )
                return future
        self._retried(False)
        survivors = self.parallelism - 1
        if survivors < 1:
            raise BackendError(f"every function of task {self.task_id} was lost: {error}")
        self.parallelism = survivors
        self._resplit = True
        self._log(
            f"function {func_id} dropped: its {len(lane.remaining)} samples are re-split over "
            f"the {survivors} other function(s) from the next round"
        )
        barrier.drop(func_id)
        return None  # its slot goes back when the segment's survivors stop (`_run_segment`)

    def _lost(
        self, func_id: int, error: BackendError, *, replaceable: bool, note: str = ""
    ) -> bool:
        """Log a lost worker; True if it may be replaced (the retry budget allows it).
        `_retried` then records whether a replacement started."""
        retry = replaceable and self._retries < self.request.max_retries
        budget = f"retry {self._retries + int(retry)}/{self.request.max_retries}"
        self._log(f"function {func_id} lost ({error}); {note or budget}")
        return retry

    def _retried(self, replaced: bool) -> None:
        """A lost worker's outcome: a replacement started (a retry spent), or none."""
        self._retries += int(replaced)
        self.listener.on_function_lost(replaced)

    def _threads(self, functions: int) -> int:
        """Torch threads for each of `functions` invocations starting now: their share of
        the cores, counting the functions of the other running tasks. Two tasks of N=1 on
        2 cores each ran 2 threads, and their spinning thread pools trained 10x slower."""
        return _threads(functions, self.services.slots.busy())

    def _log(self, message: str) -> None:
        self.services.log("job", message)

    def _function_log(self, source: str, message: str) -> None:
        self.services.log(source, message)


def _threads(functions: int, busy: int = 0) -> int:
    """A function's share of this machine's cores, so N functions, and the `busy` slots
    of every running task, do not oversubscribe it."""
    return max(1, (os.cpu_count() or 1) // max(functions, busy, 1))


def _at(position: Position) -> str:
    """Where a task stands, for the log: a round boundary."""
    return f"at round {position.round} of epoch {position.epoch + 1}"


def _describe(record: EpochRecord) -> str:
    text = (
        f"epoch {record.epoch}: train loss {record.train_loss:.4f}, N={record.ns_text()}, "
        f"{record.rounds} round(s), {record.epoch_duration_s:.2f} s, "
        f"{record.samples_per_s:.0f} samples/s"
    )
    if record.failures:
        text += f", {record.failures} function(s) lost, {record.retries} replaced"
    if record.accuracy is not None:
        text += f", val loss {record.val_loss:.4f}, accuracy {record.accuracy:.2f}%"
    return text


def _outer_config(request: TrainRequest) -> OuterConfig:
    return OuterConfig(request.outer_optimizer.value, request.outer_lr, request.outer_momentum)
