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
from kubeml.control.barrier import RoundBarrier
from kubeml.control.chunks import assign_chunks, validation_slices
from kubeml.control.outer import OuterConfig
from kubeml.control.parameter_server import ParameterServer
from kubeml.control.policy import ParallelismPolicy, scaled_lr, warmup_steps
from kubeml.errors import FunctionError, FunctionTimeoutError, KubeMLError
from kubeml.runtime.invocation import FunctionCode, Invocation, InvocationResult, Mode
from kubeml.runtime.sync import RoundReport
from kubeml.stores.datasets import DatasetStore
from kubeml.stores.interfaces import ControlModels


class JobListener(Protocol):
    """Where a job reports progress (the engine records it as task state and history)."""

    def on_round(
        self, epoch: int, round_index: int, train_loss: float, parallelism: int
    ) -> None: ...

    def on_epoch(self, record: EpochRecord) -> None: ...

    def on_invocations(self, started: int, failed: int) -> None: ...


@dataclass(frozen=True)
class JobServices:
    backend: FunctionBackend
    datasets: DatasetStore
    models: ControlModels
    log: Callable[[str, str], None]  # (source, message) into this task's log
    resize: Callable[[int], int]  # ask the scheduler for N slots; returns N granted
    round_timeout_s: float = 600.0


@dataclass(frozen=True)
class RoundState:
    """Where a task stands at a round boundary: what a round-state checkpoint saves, and
    where a replayed round or a change of N starts from."""

    epoch: int  # the epoch running, counted from 0
    round: int  # rounds merged so far in this epoch
    parallelism: int  # N, the functions of this epoch


@dataclass(frozen=True)
class JobOutcome:
    state: TaskState
    error: str | None = None
    traceback: str | None = None


class _Stopped(Exception):
    pass


class TrainJob:
    """Runs one train task to its end and never raises: failures become its outcome.

    The protocol (ARCHITECTURE section 3): one init invocation publishes the reference
    model; each epoch splits the shuffled chunks over N functions that train in K-AVG
    rounds through a `RoundBarrier`; validation runs on N test slices every
    `validate_every` epochs and after the last; the reference model is saved as the
    task's model after every epoch, so a task can resume from its last completed epoch.
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
    ) -> None:
        self.task_id = task_id
        self.request = request
        self.function = function
        self.services = services
        self.listener = listener
        self.policy = policy
        self.start_epoch = start_epoch
        self.stop_requested = threading.Event()
        self.state = RoundState(start_epoch, 0, parallelism)
        self.server = ParameterServer(task_id, services.models, _outer_config(request))
        self._start_parallelism = parallelism  # lr_scaling is relative to this N
        self._lr = request.lr
        self._lr_from: float | None = None  # set by a resize: the next epoch warms up from it
        info = services.datasets.get(request.dataset)
        self._train_size, self._test_size = info.train_size, info.test_size

    @property
    def parallelism(self) -> int:
        return self.state.parallelism

    def stop(self) -> None:
        """Ask the job to stop at the next round boundary."""
        self.stop_requested.set()

    # -- the whole task, as a table of contents -------------------------------------------
    def run(self) -> JobOutcome:
        models = self.services.models
        try:
            self._log(
                f"task started: N={self.parallelism}, K={self.request.k}, "
                f"{self.request.epochs} epoch(s) on {self._train_size} samples"
            )
            self._initialise()
            for epoch in range(self.start_epoch, self.request.epochs):
                self.state = RoundState(epoch, 0, self.parallelism)
                record = self._train_epoch(epoch)
                models.save_final(self.task_id)
                if self.stop_requested.is_set():
                    raise _Stopped
                if self._validation_due(epoch):
                    record = self._validate(record)
                self.listener.on_epoch(record)
                self._log(_describe(record))
                if record.accuracy is not None and record.accuracy >= self.request.goal_accuracy:
                    self._log(f"goal accuracy {self.request.goal_accuracy}% reached")
                    break
                if epoch + 1 < self.request.epochs:
                    self._rescale(record)
            self._log("task finished")
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
            models.clear_task(self.task_id)

    # -- phases ----------------------------------------------------------------------------
    def _initialise(self) -> None:
        models = self.services.models
        if self.start_epoch > 0 and models.has_final(self.task_id):
            # Resuming: the model saved after the last completed epoch is the reference.
            models.write_reference(self.task_id, models.load_final(self.task_id))
            self._log(f"resuming from epoch {self.start_epoch}")
            return
        # Start all N workers now, not one for init and the rest at the first epoch, so
        # every function of the first round starts together (a cold worker costs ~1 s).
        self.services.backend.warm(self.parallelism)
        self._run(Mode.INIT, [()], sync=None)

    def _train_epoch(self, epoch: int) -> EpochRecord:
        n = self.parallelism
        shards = assign_chunks(self._train_size, n, self.request.seed, epoch)
        barrier = RoundBarrier(range(n), self._merge)
        started = time.monotonic()
        results = self._run(Mode.TRAIN, shards, sync=barrier)
        self._lr_from = None  # the warm-up after a resize is over
        duration = time.monotonic() - started
        samples = sum(r.samples for r in results)
        losses = [(r.loss, r.samples) for r in results if r.loss is not None and r.samples]
        weight = sum(n for _, n in losses)
        train_loss = sum(loss * n for loss, n in losses) / weight if weight else float("nan")
        return EpochRecord(
            epoch=epoch + 1,
            train_loss=train_loss,
            parallelism=n,
            epoch_duration_s=duration,
            samples_per_s=samples / duration if duration > 0 else 0.0,
            rounds=barrier.rounds_merged,
            lr=self._lr,
        )

    def _merge(self, round_index: int, reports: list[RoundReport]) -> bool:
        """A round is complete (the barrier calls this): merge it, record it, and answer
        whether the functions go on."""
        self.server.merge(reports)
        self.state = replace(self.state, round=round_index + 1)
        batches = sum(r.batches for r in reports)
        loss = sum(r.loss_sum for r in reports) / batches if batches else float("nan")
        self.listener.on_round(self.state.epoch + 1, self.state.round, loss, self.parallelism)
        return not self.stop_requested.is_set()

    def _validation_due(self, epoch: int) -> bool:
        every = self.request.validate_every
        last = epoch + 1 == self.request.epochs
        return last or (every > 0 and (epoch + 1) % every == 0)

    def _validate(self, record: EpochRecord) -> EpochRecord:
        slices = validation_slices(self._test_size, self.parallelism)
        results = [r for r in self._run(Mode.VALIDATE, slices, sync=None) if r.samples > 0]
        total = sum(r.samples for r in results)
        accuracy = sum((r.accuracy or 0.0) * r.samples for r in results) / total
        loss = sum((r.loss or 0.0) * r.samples for r in results) / total
        return record.model_copy(update={"accuracy": accuracy, "val_loss": loss})

    def _rescale(self, record: EpochRecord) -> None:
        capacity = min(self.services.backend.capacity, os.cpu_count() or 1)
        wanted = self.policy.next_parallelism(record, capacity)
        if wanted != self.parallelism:
            granted = self.services.resize(wanted)
            if granted != self.parallelism:
                req = self.request
                lr = scaled_lr(req.lr, req.lr_scaling.value, self._start_parallelism, granted)
                self._log(f"parallelism {self.parallelism} -> {granted}, lr {self._lr:g} -> {lr:g}")
                if lr != self._lr:
                    self._lr_from, self._lr = self._lr, lr
            self.state = replace(self.state, parallelism=granted)

    # -- running invocations ---------------------------------------------------------------
    def _run(
        self,
        mode: Mode,
        shards: Sequence[tuple[tuple[int, int], ...]],
        sync: RoundBarrier | None,
    ) -> list[InvocationResult]:
        req = self.request
        base = Invocation(
            mode=mode,
            task_id=self.task_id,
            function=self.function,
            dataset=req.dataset,
            parallelism=len(shards),
            k=req.k,
            lr=self._lr,
            batch_size=req.batch_size,
            epoch=self.state.epoch,
            seed=req.seed,
            optimizer_state=req.optimizer_state.value,
            threads=max(1, (os.cpu_count() or 1) // len(shards)),
        )
        if mode is Mode.TRAIN and self._lr_from is not None:
            shard = max(sum(b - a for a, b in r) for r in shards)
            steps = warmup_steps(req.k, -(-shard // req.batch_size))
            base = replace(base, lr_warmup_from=self._lr_from, lr_warmup_steps=steps)
        invocations = [replace(base, func_id=i, ranges=r) for i, r in enumerate(shards)]
        futures = self.services.backend.invoke(invocations, sync=sync, log=self._function_log)
        try:
            return self._collect(futures, sync)
        finally:
            failed = sum(1 for f in futures if f.done() and f.exception() is not None)
            self.listener.on_invocations(len(futures), failed)

    def _collect(
        self, futures: list[Future[InvocationResult]], sync: RoundBarrier | None
    ) -> list[InvocationResult]:
        """Wait for every invocation; fail on the first error, or when no round progresses."""
        timeout = self.services.round_timeout_s
        started = time.monotonic()
        while True:
            done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                wait(pending, timeout=min(timeout, 30))  # the others are released with "stop"
                raise errors[0]  # type: ignore[misc]
            if not pending:
                if sync is not None and -1 in sync.failed:
                    cause = sync.failed[-1]
                    raise FunctionError(f"merging a round failed: {cause!r}") from cause
                return [f.result() for f in futures]
            last = sync.last_progress if sync is not None else started
            if time.monotonic() - max(last, started) > timeout:
                waiting = sorted(sync.waiting_for()) if sync is not None else []
                self.services.backend.cancel(self.task_id)
                who = f"function(s) {waiting}" if waiting else "the functions"
                raise FunctionTimeoutError(
                    f"{who} made no progress for {timeout:.0f} s (a hung train/validate hook?); "
                    "the task was stopped"
                )

    def _log(self, message: str) -> None:
        self.services.log("job", message)

    def _function_log(self, source: str, message: str) -> None:
        self.services.log(source, message)


def _describe(record: EpochRecord) -> str:
    text = (
        f"epoch {record.epoch}: train loss {record.train_loss:.4f}, N={record.parallelism}, "
        f"{record.rounds} round(s), {record.epoch_duration_s:.2f} s, "
        f"{record.samples_per_s:.0f} samples/s"
    )
    if record.accuracy is not None:
        text += f", val loss {record.val_loss:.4f}, accuracy {record.accuracy:.2f}%"
    return text


def _outer_config(request: TrainRequest) -> OuterConfig:
    return OuterConfig(request.outer_optimizer.value, request.outer_lr, request.outer_momentum)
