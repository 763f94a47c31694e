"""Live train tasks: one registry, behind one lock, of each task's state, history and job."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from kubeml.api.schemas import EpochRecord, History, TaskInfo
from kubeml.control.job.state import Requests

if TYPE_CHECKING:
    from kubeml.control.records.metadata import MetadataStore
    from kubeml.control.tasks.metrics import Metrics


class TaskRecorder:
    """A live task's state and history; persists them at every epoch.

    It is the job's `JobListener`. Reads and writes of `info` and `history` go through
    the registry's lock, so a reader never sees an epoch half recorded. `requests` is
    where the task's stop and resize requests wait for its job, from admission on.
    """

    def __init__(
        self,
        info: TaskInfo,
        history: History,
        metadata: MetadataStore,
        metrics: Metrics,
        lock: threading.Condition,
    ) -> None:
        self._info, self._history = info, history
        self._metadata, self._metrics, self._lock = metadata, metrics, lock
        self.requests = Requests()

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> TaskInfo:
        with self._lock:
            return self._info

    def history(self) -> History:
        """A copy of the history so far."""
        with self._lock:
            return self._history.model_copy(deep=True)

    @property
    def epochs_done(self) -> int:
        with self._lock:
            return len(self._history.epochs)

    def update(self, **fields: Any) -> TaskInfo:
        """Change fields of the task's state (not persisted: `persist` does that)."""
        with self._lock:
            self._info = self._info.model_copy(update=fields)
            if "state" in fields:
                self._history.state = fields["state"]
            return self._info

    def persist(self) -> None:
        with self._lock:
            info, history = self._info, self._history.model_copy(deep=True)
        # The live task's own state: kept in memory, not raised, when the disk is full
        # (the job goes on; its checkpoints say what a resume needs).
        self._metadata.put_history(history, keep=True)
        self._metadata.put_task(info, keep=True)

    # -- JobListener ------------------------------------------------------------------------
    def on_round(
        self, epoch: int, round_index: int, train_loss: float, parallelism: int, samples: int
    ) -> None:
        self.update(epoch=epoch, round=round_index, train_loss=train_loss, parallelism=parallelism)
        self._metrics.inc("kubeml_job_rounds_total", self.id)
        self._metrics.set("kubeml_job_parallelism", self.id, parallelism)  # also mid-epoch

    def on_epoch(self, record: EpochRecord) -> None:
        update: dict[str, Any] = {
            "epoch": record.epoch,
            "train_loss": record.train_loss,
            "parallelism": record.parallelism,
        }
        if record.accuracy is not None:
            update |= {"accuracy": record.accuracy, "val_loss": record.val_loss}
        with self._lock:
            self._history.epochs.append(record)
            self._info = self._info.model_copy(update=update)
        self.persist()
        m, tid = self._metrics, self.id
        m.set("kubeml_job_train_loss", tid, record.train_loss)
        m.set("kubeml_job_parallelism", tid, record.parallelism)
        m.set("kubeml_job_epoch_duration_seconds", tid, record.epoch_duration_s)
        m.set("kubeml_job_samples_per_second", tid, record.samples_per_s)
        if record.accuracy is not None and record.val_loss is not None:
            m.set("kubeml_job_validation_accuracy", tid, record.accuracy)
            m.set("kubeml_job_validation_loss", tid, record.val_loss)

    def on_invocations(self, started: int, failed: int) -> None:
        self._metrics.inc("kubeml_job_function_invocations_total", self.id, started)
        if failed:
            self._metrics.inc("kubeml_job_function_failures_total", self.id, failed)

    def on_function_lost(self, replaced: bool) -> None:
        with self._lock:
            info = self._info
            self._info = info.model_copy(
                update={"failures": info.failures + 1, "retries": info.retries + int(replaced)}
            )

    def on_restore(self, records: list[EpochRecord]) -> None:
        """Resuming from a checkpoint: its completed epochs are the history."""
        with self._lock:
            self._history.epochs = list(records)
            self._info = self._info.model_copy(update={"epoch": len(records), "round": 0})
        self.persist()


class TaskRegistry:
    """The queued and running tasks: their recorders (state, history, requests), and waiting
    for their end."""

    def __init__(self, metadata: MetadataStore, metrics: Metrics) -> None:
        self._metadata, self._metrics = metadata, metrics
        self._changed = threading.Condition()
        self._recorders: dict[str, TaskRecorder] = {}

    def add(self, info: TaskInfo, history: History) -> TaskRecorder:
        recorder = TaskRecorder(info, history, self._metadata, self._metrics, self._changed)
        with self._changed:
            self._recorders[info.id] = recorder
        return recorder

    def request_parallelism(self, task_id: str, parallelism: int, reason: str) -> None:
        """Pass the scheduler's resize to a live task, for its job's next round boundary."""
        recorder = self.get(task_id)
        if recorder is not None:
            recorder.requests.resize(parallelism, reason)

    def remove(self, task_id: str) -> None:
        """The task has ended: forget it and wake everyone waiting for it."""
        with self._changed:
            self._recorders.pop(task_id, None)
            self._changed.notify_all()

    def get(self, task_id: str) -> TaskRecorder | None:
        with self._changed:
            return self._recorders.get(task_id)

    def live(self) -> list[TaskRecorder]:
        with self._changed:
            return list(self._recorders.values())

    def __contains__(self, task_id: object) -> bool:
        with self._changed:
            return task_id in self._recorders

    def wait(self, task_id: str, timeout_s: float | None = None) -> bool:
        """Block until the task is no longer live; False if `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while task_id in self._recorders:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(timeout=remaining)
        return True
