"""The engine: kubeml's Python entry point, and what the HTTP server sits on.

engine = Engine(Settings(home=...))
engine.create_function("lenet", open("lenet.py").read())
engine.create_dataset("mnist", train_x, train_y, test_x, test_y)
task_id = engine.train(TrainRequest(function="lenet", dataset="mnist", epochs=3))
engine.wait(task_id)
engine.get_history(task_id), engine.infer(task_id, [sample])
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.api.schemas import (
    DatasetInfo,
    EpochRecord,
    FunctionInfo,
    History,
    LogLine,
    TaskInfo,
    TaskState,
    TrainRequest,
)
from kubeml.control.job import JobOutcome, JobServices, TrainJob
from kubeml.control.metadata import MetadataStore
from kubeml.control.metrics import Metrics
from kubeml.control.policy import StaticPolicy, ThroughputPolicy
from kubeml.control.scheduler import Scheduler
from kubeml.control.tasklog import TaskLogs
from kubeml.errors import InvalidInputError, KubeMLError, NotFoundError
from kubeml.runtime.invocation import FunctionCode, Invocation, Mode
from kubeml.runtime.loader import check_source, code_sha256
from kubeml.settings import Settings
from kubeml.stores.datasets import ARRAY_FIELDS, DatasetStore, check_name
from kubeml.stores.interfaces import ControlModels

if TYPE_CHECKING:
    import numpy as np

    from kubeml.backends.base import FunctionBackend


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _TaskRecorder:
    """A running task's live state and history; persists at every epoch and state change."""

    def __init__(self, engine: Engine, info: TaskInfo, history: History) -> None:
        self.engine, self.info, self.history = engine, info, history

    def on_round(self, epoch: int, round_index: int, train_loss: float, parallelism: int) -> None:
        self.info = self.info.model_copy(
            update={
                "epoch": epoch,
                "round": round_index,
                "train_loss": train_loss,
                "parallelism": parallelism,
            }
        )
        self.engine.metrics.inc("kubeml_job_rounds_total", self.info.id)

    def on_epoch(self, record: EpochRecord) -> None:
        self.history.epochs.append(record)
        update: dict[str, Any] = {
            "epoch": record.epoch,
            "train_loss": record.train_loss,
            "parallelism": record.parallelism,
        }
        if record.accuracy is not None:
            update |= {"accuracy": record.accuracy, "val_loss": record.val_loss}
        self.info = self.info.model_copy(update=update)
        self.engine.metadata.put_history(self.history)
        self.engine.metadata.put_task(self.info)
        m, tid = self.engine.metrics, self.info.id
        m.set("kubeml_job_train_loss", tid, record.train_loss)
        m.set("kubeml_job_parallelism", tid, record.parallelism)
        m.set("kubeml_job_epoch_duration_seconds", tid, record.epoch_duration_s)
        m.set("kubeml_job_samples_per_second", tid, record.samples_per_s)
        if record.accuracy is not None and record.val_loss is not None:
            m.set("kubeml_job_validation_accuracy", tid, record.accuracy)
            m.set("kubeml_job_validation_loss", tid, record.val_loss)

    def on_invocations(self, started: int, failed: int) -> None:
        self.engine.metrics.inc("kubeml_job_function_invocations_total", self.info.id, started)
        if failed:
            self.engine.metrics.inc("kubeml_job_function_failures_total", self.info.id, failed)


class Engine:
    """Functions, datasets, train tasks, histories and inference on one backend."""

    def __init__(self, settings: Settings | None = None, *, backend: FunctionBackend | None = None):
        from kubeml.backends import create_backend

        self.settings = settings or Settings()
        home = Path(self.settings.home).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.metadata = MetadataStore(home / "kubeml.db")
        self.backend = backend or create_backend(self.settings)  # it builds its stores
        self.datasets: DatasetStore = self.backend.datasets
        self.models: ControlModels = self.backend.models
        self.logs = TaskLogs(home / "logs")
        self.metrics = Metrics()
        self.scheduler = Scheduler(self.backend.capacity, self._start)
        self._recorders: dict[str, _TaskRecorder] = {}
        self._jobs: dict[str, TrainJob] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._mark_interrupted()

    def warm_up(self) -> None:
        """Start the backend's workers in the background, so the first task finds them warm."""
        threading.Thread(
            target=self.backend.warm,
            args=(self.backend.capacity,),
            daemon=True,
            name="kubeml-warm-up",
        ).start()

    # -- functions --------------------------------------------------------------------------
    def create_function(self, name: str, code: str) -> FunctionInfo:
        return self._put_function(name, code, update=False)

    def update_function(self, name: str, code: str) -> FunctionInfo:
        return self._put_function(name, code, update=True)

    def _put_function(self, name: str, code: str, *, update: bool) -> FunctionInfo:
        check_name("function", name)
        check_source(name, code)
        sha = code_sha256(code)
        path = self._code_path(name, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        return self.metadata.put_function(name, sha, code, update=update)

    def _code_path(self, name: str, sha: str) -> Path:
        return self.home / "functions" / name / f"{sha}.py"

    def get_function(self, name: str) -> FunctionInfo:
        return self.metadata.get_function(name)

    def list_functions(self) -> list[FunctionInfo]:
        return self.metadata.list_functions()

    def delete_function(self, name: str) -> None:
        self.metadata.delete_function(name)  # code files stay: finished tasks still infer

    # -- datasets ---------------------------------------------------------------------------
    def create_dataset(
        self,
        name: str,
        train_x: np.ndarray,
        train_y: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray,
    ) -> DatasetInfo:
        arrays = dict(zip(ARRAY_FIELDS, (train_x, train_y, test_x, test_y), strict=True))
        return self.datasets.create(name, arrays)

    def get_dataset(self, name: str) -> DatasetInfo:
        return self.datasets.get(name)

    def list_datasets(self) -> list[DatasetInfo]:
        return self.datasets.list()

    def delete_dataset(self, name: str) -> None:
        busy = [r.info.id for r in self._live() if r.info.request.dataset == name]
        if busy:
            raise InvalidInputError(
                f"dataset {name!r} is in use by task(s) {busy}; stop them first"
            )
        self.datasets.delete(name)

    # -- train tasks ------------------------------------------------------------------------
    def train(self, request: TrainRequest | None = None, **fields: Any) -> str:
        """Queue a train task; returns its id. Fields are those of `TrainRequest`."""
        request = request or TrainRequest(**fields)
        function = self.metadata.get_function(request.function)
        self.datasets.get(request.dataset)
        task_id = self._new_task_id()
        info = TaskInfo(
            id=task_id,
            request=request,
            state=TaskState.QUEUED,
            parallelism=request.parallelism,
            function_sha256=function.sha256,
            created_at=_now(),
        )
        self._enqueue(info, History(task_id=task_id, request=request, state=TaskState.QUEUED))
        return task_id

    def resume_task(self, task_id: str) -> None:
        """Continue an interrupted or failed task from its last completed epoch."""
        info = self.get_task(task_id)
        if not info.state.finished or info.state is TaskState.SUCCEEDED:
            raise InvalidInputError(f"task {task_id!r} is {info.state.value}; nothing to resume")
        history = self.metadata.get_history(task_id)
        info = info.model_copy(update={"state": TaskState.QUEUED, "error": None, "traceback": None})
        self._enqueue(info, history.model_copy(update={"state": TaskState.QUEUED}))

    def _enqueue(self, info: TaskInfo, history: History) -> None:
        self.metadata.put_task(info)
        self.metadata.put_history(history)
        with self._changed:
            self._recorders[info.id] = _TaskRecorder(self, info, history)
        self.logs.append(info.id, "job", f"task queued: {info.request.model_dump_json()}")
        try:
            self.scheduler.submit(info.id, info.parallelism)
        except KubeMLError:
            with self._changed:
                del self._recorders[info.id]
            self.metadata.delete_task(info.id)
            self.metadata.delete_history(info.id)
            self.logs.delete(info.id)
            raise

    def _new_task_id(self) -> str:
        while True:
            task_id = secrets.token_hex(4)
            try:
                self.metadata.get_task(task_id)
            except NotFoundError:
                return task_id

    def _start(self, task_id: str, parallelism: int) -> None:
        recorder = self._recorders[task_id]
        info = recorder.info
        code = FunctionCode(
            info.request.function,
            info.function_sha256 or "",
            str(self._code_path(info.request.function, info.function_sha256 or "")),
        )
        services = JobServices(
            backend=self.backend,
            datasets=self.datasets,
            models=self.models,
            log=lambda source, message: self.logs.append(task_id, source, message),
            resize=lambda n: self.scheduler.try_resize(task_id, n),
            round_timeout_s=self.settings.round_timeout_s,
        )
        policy = StaticPolicy() if info.request.static else ThroughputPolicy()
        job = TrainJob(
            task_id,
            info.request,
            code,
            parallelism,
            services,
            recorder,
            policy,
            start_epoch=len(recorder.history.epochs),
        )
        self._jobs[task_id] = job
        recorder.info = info.model_copy(update={"state": TaskState.RUNNING, "started_at": _now()})
        self.metadata.put_task(recorder.info)
        threading.Thread(
            target=self._run_job, args=(job, recorder), daemon=True, name=f"kubeml-job-{task_id}"
        ).start()

    def _run_job(self, job: TrainJob, recorder: _TaskRecorder) -> None:
        outcome = JobOutcome(TaskState.FAILED, "the job did not report an outcome")
        try:
            outcome = job.run()
        finally:
            self._finish(recorder, outcome)

    def _finish(self, recorder: _TaskRecorder, outcome: JobOutcome) -> None:
        task_id = recorder.info.id
        recorder.info = recorder.info.model_copy(
            update={
                "state": outcome.state,
                "error": outcome.error,
                "traceback": outcome.traceback,
                "finished_at": _now(),
            }
        )
        recorder.history.state = outcome.state
        self.metadata.put_history(recorder.history)
        self.metadata.put_task(recorder.info)
        self.metrics.forget_gauges(task_id)
        with self._changed:
            self._recorders.pop(task_id, None)
            self._jobs.pop(task_id, None)
            self._changed.notify_all()
        self.scheduler.finished(task_id)

    def _live(self) -> list[_TaskRecorder]:
        with self._changed:
            return list(self._recorders.values())

    def get_task(self, task_id: str) -> TaskInfo:
        recorder = self._recorders.get(task_id)
        return recorder.info if recorder else self.metadata.get_task(task_id)

    def list_tasks(self) -> list[TaskInfo]:
        live = {r.info.id: r.info for r in self._live()}
        return [live.get(t.id, t) for t in self.metadata.list_tasks()]

    def stop_task(self, task_id: str) -> TaskInfo:
        """Stop a task: a queued one at once, a running one at its next round boundary."""
        info = self.get_task(task_id)
        if info.state.finished:
            return info
        if self.scheduler.cancel(task_id):
            recorder = self._recorders[task_id]
            self._finish(recorder, JobOutcome(TaskState.STOPPED))
            self.scheduler.finished(task_id)
        else:
            job = self._jobs.get(task_id)
            if job is not None:
                job.stop()
        return self.get_task(task_id)

    def prune_tasks(self) -> list[str]:
        """Forget the records of finished tasks (their histories and models stay)."""
        pruned = [t.id for t in self.metadata.list_tasks() if t.state.finished]
        for task_id in pruned:
            self.metadata.delete_task(task_id)
        return pruned

    def wait(self, task_id: str, timeout_s: float | None = None) -> TaskInfo:
        """Block until the task has finished (or `timeout_s` passed); returns its state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while task_id in self._recorders:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(timeout=remaining)
        return self.get_task(task_id)

    # -- histories --------------------------------------------------------------------------
    def get_history(self, task_id: str) -> History:
        recorder = self._recorders.get(task_id)
        return (
            recorder.history.model_copy(deep=True)
            if recorder
            else self.metadata.get_history(task_id)
        )

    def list_histories(self) -> list[History]:
        return self.metadata.list_histories()

    def delete_history(self, task_id: str) -> None:
        """Delete a finished task's history, trained model and log."""
        if task_id in self._recorders:
            raise InvalidInputError(f"task {task_id!r} is still running; stop it first")
        self.metadata.delete_history(task_id)
        self.models.delete_final(task_id)
        self.logs.delete(task_id)

    def prune_histories(self) -> list[str]:
        pruned = [h.task_id for h in self.metadata.list_histories() if h.state.finished]
        for task_id in pruned:
            self.delete_history(task_id)
        return pruned

    # -- inference, logs, metrics -----------------------------------------------------------
    def infer(self, task_id: str, data: list[Any]) -> Any:
        """Predictions of a task's trained model for `data`, run by its function."""
        if not isinstance(data, list) or not data:
            raise InvalidInputError("infer data must be a non-empty JSON list of samples")
        history = self.metadata.get_history(task_id)
        if not self.models.has_final(task_id):
            raise NotFoundError(f"task {task_id!r} has no trained model yet")
        info = (
            self.metadata.get_task(task_id)
            if task_id not in self._recorders
            else self.get_task(task_id)
        )
        name, sha = history.request.function, info.function_sha256 or ""
        invocation = Invocation(
            mode=Mode.INFER,
            task_id=task_id,
            function=FunctionCode(name, sha, str(self._code_path(name, sha))),
            dataset=history.request.dataset,
            infer_data=data,
            threads=1,
        )
        future = self.backend.invoke([invocation], sync=None, log=self._infer_log(task_id))[0]
        return future.result(timeout=self.settings.round_timeout_s).output

    def _infer_log(self, task_id: str) -> Any:
        return lambda source, message: self.logs.append(task_id, f"infer/{source}", message)

    def logs_of(self, task_id: str, since: int = 0) -> list[LogLine]:
        self.get_task(task_id)
        return self.logs.read(task_id, since)

    def metrics_text(self) -> str:
        return self.metrics.render(running=len(self.scheduler.running()))

    def _mark_interrupted(self) -> None:
        """Tasks that were running when the control plane went down become resumable."""
        for info in self.metadata.list_tasks():
            if info.state.finished:
                continue
            done = len(self.metadata.get_history(info.id).epochs)
            self.metadata.put_task(
                info.model_copy(
                    update={
                        "state": TaskState.FAILED,
                        "finished_at": _now(),
                        "error": f"interrupted: the control plane stopped during this task; "
                        f"`kubeml task resume --id {info.id}` continues after epoch {done}",
                    }
                )
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs.values()):
            job.stop()
        for task_id in list(self._recorders):
            self.wait(task_id, timeout_s=30)
        self.backend.close()
        self.metadata.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
