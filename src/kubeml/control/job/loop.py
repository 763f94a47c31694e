"""A train job: the K-AVG protocol of one task, from init to the persisted final model."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kubeml.api.schemas import EpochRecord, TaskState, TrainRequest
from kubeml.control.job.decisions import Decision, Event, Situation, decide
from kubeml.control.job.kept import gather_kept, restore_kept, starts_kept
from kubeml.control.job.plain import run_plain, validate_epoch
from kubeml.control.job.ports import JobListener, JobOutcome, JobServices, NextParallelism
from kubeml.control.job.resize import LrRule, resize
from kubeml.control.job.segment import Segment, at
from kubeml.control.job.state import JobState, Requests
from kubeml.control.merge.outer import OuterConfig
from kubeml.control.merge.parameter_server import ParameterServer
from kubeml.control.plan.position import Position
from kubeml.control.records.checkpoints import Checkpoint, CheckpointWriter
from kubeml.errors import KubeMLError
from kubeml.runtime.invocation import FunctionCode, Mode
from kubeml.stores.interfaces import ShardRequest

if TYPE_CHECKING:
    import torch


class _Stopped(Exception):
    pass


class TrainJob:
    """Runs one train task to its end and never raises: failures become its outcome.

    The protocol (ARCHITECTURE sections 3, 3a): one init invocation publishes the
    reference model; each epoch gives every function a lane of the epoch's sample order
    (`Position`), and the functions train it in K-AVG rounds (`Segment`, one N at a time).
    After every merged round the position is exact, so the job can replay a lost
    function's round on a fresh worker, re-split the remaining samples over a new N at
    any round boundary, and checkpoint (epoch ends, every `checkpoint_every_s`, stop).
    Validation runs on N test slices every `validate_every` epochs and after the last.

    What the job knows is one value, `state` (`JobState`, which says who writes what);
    what to do about a lost, failed or hung function is `decisions.decide`'s; every change
    of N goes through `resize.resize`. Stop and resize requests arrive in `state.requests`.
    """

    def __init__(
        self,
        task_id: str,
        request: TrainRequest,
        function: FunctionCode,
        parallelism: int,
        services: JobServices,
        listener: JobListener,
        policy: NextParallelism,
        start_epoch: int = 0,
        records: Sequence[EpochRecord] = (),
        requests: Requests | None = None,
    ) -> None:
        self.task_id, self.request, self.function = task_id, request, function
        self.services, self.listener, self.policy = services, listener, policy
        self.start_epoch = start_epoch
        self.lr_rule = LrRule(request.lr, request.lr_scaling.value)
        first_lr = self.lr_rule.at(parallelism)
        self.state = JobState(
            parallelism, first_lr, start_epoch, requests or Requests(), records=list(records)
        )
        self.server = ParameterServer(task_id, services.models, _outer_config(request))
        services.models.request_shards(task_id, _shard_request(request))
        self.checkpoints = CheckpointWriter(
            services.checkpoints, task_id, request.checkpoint_every_s, self.log
        )
        info = services.datasets.get(request.dataset)
        self.train_size, self.test_size = info.train_size, info.test_size
        self.chunk_samples = services.datasets.chunk_samples(request.dataset)

    def stop(self) -> None:
        """Ask the job to stop at the next round boundary."""
        self.state.requests.stop()

    def request_parallelism(self, parallelism: int, reason: str = "") -> None:
        """Change N at the next round boundary (the epoch's remaining samples are re-split);
        `reason` (the scheduler's) goes into the task's log."""
        self.state.requests.resize(parallelism, reason)

    # -- the whole task, as a table of contents -------------------------------------------
    def run(self) -> JobOutcome:
        state, models = self.state, self.services.models
        try:
            self.log(
                f"task started: N={state.parallelism}, K={self.request.k}, "
                f"{self.request.epochs} epoch(s) on {self.train_size} samples, "
                f"lr {state.lr:g} ({self.request.lr:g}, {self.request.lr_scaling.value} scaling)"
            )
            position = self._initialise()
            for epoch in range(position.epoch, self.request.epochs):
                if position.epoch != epoch:
                    position = self._fresh_position(epoch)
                state.epoch = epoch
                record = self._train_epoch(position)
                if self.validation_due(epoch):
                    record = self._validate(record)
                state.records.append(record)
                # The epoch's figures first, as the peers report them: saving the model
                # can take seconds (a sharded task gathers it). A resume from an older
                # checkpoint puts the history back to that checkpoint's epochs.
                self.listener.on_epoch(record)
                self.log(_describe(record))
                if phases := state.take_phases(record.epoch):
                    self.log(phases)
                goal = record.accuracy is not None and record.accuracy >= self.request.goal_accuracy
                last = goal or epoch + 1 == self.request.epochs
                checkpoint = self._checkpoint_at_epoch_end(last)
                if checkpoint or last:
                    models.save_final(self.task_id)
                if checkpoint:
                    self.checkpoint(self._fresh_position(epoch + 1))
                if state.requests.stopping:
                    raise _Stopped
                if goal:
                    self.log(f"goal accuracy {self.request.goal_accuracy}% reached")
                    break
                if epoch + 1 < self.request.epochs:
                    self._rescale(record)
            self.log("task finished")
            self.checkpoints.delete()
            return JobOutcome(TaskState.SUCCEEDED)
        except _Stopped:
            self.log("task stopped on request")
            return JobOutcome(TaskState.STOPPED)
        except KubeMLError as exc:
            self.log(f"task failed: {exc}")
            if exc.details:
                self.log(exc.details.rstrip())
            return JobOutcome(TaskState.FAILED, str(exc), exc.details)
        except Exception as exc:
            details = traceback.format_exc()
            self.log(f"task failed: internal error {exc!r}\n{details}")
            return JobOutcome(TaskState.FAILED, f"internal error: {exc!r}", details)
        finally:
            self.checkpoints.join()
            models.clear_task(self.task_id)

    # -- phases ----------------------------------------------------------------------------
    def _initialise(self) -> Position:
        models, store = self.services.models, self.services.checkpoints
        checkpoint = store.load(self.task_id) if store is not None else None
        if checkpoint is not None:
            models.write_reference(self.task_id, checkpoint.model)
            self.state.records = list(checkpoint.records)
            self.server.load_state_dict(checkpoint.outer_state)
            self.checkpoints.sequence = checkpoint.sequence + 1
            self.listener.on_restore(list(self.state.records))
            self.log(f"resuming from the checkpoint at {checkpoint.label}")
            position = checkpoint.position
            if position.round == 0 and position.samples == 0:
                position = self._fresh_position(position.epoch)  # with today's N
            kept, states = checkpoint.function_states, models.states
            if states is not None and restore_kept(states, self.task_id, position, kept):
                # The functions go on with the optimizers they had.
                self.state.restore_at, self.state.kept_n = position.round, position.parallelism
            return position
        if self.start_epoch > 0 and models.has_final(self.task_id):
            # A task from before checkpoints: the model of its last completed epoch.
            models.write_reference(self.task_id, models.load_final(self.task_id))
            self.log(f"resuming from epoch {self.start_epoch}")
            return self._fresh_position(self.start_epoch)
        if self.state.records:  # epochs recorded without a checkpoint: they run again
            self.state.records = []
            self.listener.on_restore([])
        # Start all N workers now, not one for init and the rest at the first epoch, so
        # every function of the first round starts together (a cold worker costs ~1 s).
        self.services.backend.warm(self.state.parallelism)
        # Init runs with a training function's share of the cores (a backend that sizes
        # workers itself, Ray, gives it its worker's).
        run_plain(self, Mode.INIT, [()], threads=self.threads(self.state.parallelism))
        return self._fresh_position(0)

    def _fresh_position(self, epoch: int) -> Position:
        return Position.start(
            self.train_size, self.state.parallelism, self.request.seed, epoch, self.chunk_samples
        )

    def _train_epoch(self, position: Position) -> EpochRecord:
        state = self.state
        state.position = position
        started = time.monotonic()
        state.trained_at = None
        merged_before = position.samples
        path = position.path  # checkpointed with the position: a resume continues it
        while not position.finished:
            if state.requests.stopping:
                position.elapsed_s += time.monotonic() - started
                self.checkpoint(position)
                # The model as it stands, for inference; resume reads the checkpoint.
                self.services.models.save_final(self.task_id)
                self.log(f"stopped at epoch {position.epoch + 1}, round {position.round}")
                raise _Stopped
            self._between_rounds(position)
            if not path or path[-1] != state.parallelism:
                path.append(state.parallelism)
            Segment(self, position).run()
        state.kept_n = position.parallelism  # each lane kept its next epoch's state
        # Until the epoch's last merge: its functions may score their test slices after.
        run_s = (state.trained_at or time.monotonic()) - started
        return EpochRecord(
            epoch=position.epoch + 1,
            train_loss=position.loss_sum / position.batches if position.batches else float("nan"),
            parallelism=state.parallelism,
            parallelism_path=list(path) if len(path) > 1 else None,
            samples=position.samples,
            epoch_duration_s=position.elapsed_s + run_s,
            samples_per_s=(position.samples - merged_before) / run_s if run_s > 0 else 0.0,
            rounds=position.round,
            failures=position.failures,
            retries=position.retries,
            lr=state.lr,
        )

    def _between_rounds(self, position: Position) -> None:
        """At a round boundary: take a requested N, and re-split to the N the job runs."""
        wanted = self.state.requests.take_resize()
        if wanted is not None:
            granted = self.services.slots.answer(wanted[0])  # also when unchanged: it answers
            where = at(position)
            self.change_parallelism(granted, f"{where}: {wanted[1]}" if wanted[1] else where)
        with self.state.lock:
            self.state.resplit = False
            if position.parallelism != self.state.parallelism:
                position.resplit(self.state.parallelism)
                self.state.restore_at = None  # new lanes start with fresh optimizers
            elif starts_kept(self.request.optimizer_state.value, self.state.kept_n, position):
                # The same lanes go on (a resize granted no change, or the next epoch of
                # the same N): with the optimizer states their functions kept for it.
                self.state.restore_at = position.round

    def validation_due(self, epoch: int) -> bool:
        every = self.request.validate_every
        last = epoch + 1 == self.request.epochs
        return last or (every > 0 and (epoch + 1) % every == 0)

    def _validate(self, record: EpochRecord) -> EpochRecord:
        accuracy, loss = validate_epoch(self)
        return record.model_copy(update={"accuracy": accuracy, "val_loss": loss})

    def _rescale(self, record: EpochRecord) -> None:
        if record.parallelism_path:
            return  # the epoch ran at several N: it measured none of them for the policy
        capacity = min(self.services.backend.capacity, self.services.backend.cores())
        wanted = self.policy.next_parallelism(record, capacity)
        if wanted != self.state.parallelism:
            granted = self.services.slots.want(wanted)
            self.change_parallelism(granted, f"after epoch {record.epoch} (policy)")

    # -- what every path shares ------------------------------------------------------------
    def change_parallelism(self, granted: int, why: str) -> None:
        """Take a new N and the lr the rule gives for it (ramped up over the next segment's
        first rounds), and log it; every change of N comes here."""
        state = self.state
        change = resize(state.parallelism, state.lr, state.lr_from, granted, self.lr_rule, why)
        if change is not None:
            self.log(change.line)
            state.apply(change)

    def decide(self, event: Event, situation: Situation) -> Decision:
        """The rule's decision on `event`, kept in the state's log."""
        decision = decide(event, situation)
        with self.state.lock:
            self.state.log.append((event, decision))
        return decision

    def _checkpoint_at_epoch_end(self, last: bool) -> bool:
        """Whether an epoch end saves the model and a checkpoint: always where the model
        lives here (the central merge: a disk write). Where it lives on parameter shards,
        saving gathers the model and the optimizer's state through the control plane's
        link (4x the model's bytes took 8 s of a 20 s epoch at 100 Mbit/s), so only at a
        stop, or when a checkpoint is due or asked for at epoch ends only
        (`checkpoint_every_s` 0) and the task goes on (a finished task's checkpoint is
        deleted at once); the last epoch saves the model alone."""
        if self.services.models.remote_merge(self.task_id) is None:
            return True
        writer = self.checkpoints
        due = writer.every_s == 0 or writer.due()
        return self.state.requests.stopping or (due and not last)

    def checkpoint(self, position: Position, *, background: bool = False) -> None:
        """Save the reference model at `position`; mid-epoch ones in the background."""
        if not self.checkpoints.accepts(background):
            return
        models = self.services.models
        remote = models.remote_merge(self.task_id)
        # On parameter shards, a mid-epoch checkpoint fixes the shards' state now and
        # gathers it in the writer's thread, while the next rounds run.
        fill = remote.snapshot() if remote is not None and background else None
        model: dict[str, torch.Tensor] = {}
        if fill is None:
            views = models.layout(self.task_id).views(models.reference_groups(self.task_id))
            model = {k: v.clone() for k, v in views.items()}
        states, keep = models.states, self.request.optimizer_state.value
        snapshot = Checkpoint(
            position=Position.from_state(position.to_state()),  # a copy, frozen now
            model=model,
            records=list(self.state.records),
            outer_state=self.server.state_dict() if fill is None else {},
            function_states=(
                gather_kept(states, self.task_id, position)
                if states is not None and starts_kept(keep, self.state.kept_n, position)
                else {}
            ),
        )
        self.checkpoints.write(snapshot, background=background, fill=fill)

    def threads(self, functions: int) -> int:
        """Torch threads for each of `functions` invocations starting now: their share of
        the cores, counting the functions of the other running tasks. Two tasks of N=1 on
        2 cores each ran 2 threads, and their spinning thread pools trained 10x slower.
        A pinned count (`Settings.torch_threads`) never changes."""
        if self.services.torch_threads:
            return self.services.torch_threads
        return threads_for(functions, self.services.slots.busy())

    def log_lost(self, func_id: int, error: BaseException, note: str) -> None:
        self.log(f"function {func_id} lost ({error}); {note}")

    def log(self, message: str) -> None:
        self.services.log("job", message)

    def function_log(self, source: str, message: str) -> None:
        self.services.log(source, message)


def threads_for(functions: int, busy: int = 0) -> int:
    """A function's share of this machine's cores, so N functions, and the `busy` slots
    of every running task, do not oversubscribe it."""
    return max(1, (os.cpu_count() or 1) // max(functions, busy, 1))


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


def _shard_request(request: TrainRequest) -> ShardRequest:
    outer = _outer_config(request)
    return ShardRequest(
        request.shards, request.sync_precision.value, outer.name, outer.lr, outer.momentum
    )


def _outer_config(request: TrainRequest) -> OuterConfig:
    return OuterConfig(request.outer_optimizer.value, request.outer_lr, request.outer_momentum)
