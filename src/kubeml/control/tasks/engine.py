"""The engine: kubeml's Python entry point, and what the HTTP server sits on.

engine = Engine(Settings(home=...))
engine.create_function("lenet", open("lenet.py").read())
engine.create_dataset("mnist", train_x, train_y, test_x, test_y)
task_id = engine.train(TrainRequest(function="lenet", dataset="mnist", epochs=3))
engine.wait(task_id)
engine.get_history(task_id), engine.infer(task_id, [sample])

A facade: function code lives in `FunctionStore`, live tasks in `TaskRegistry`, admission
in `Scheduler`, and `TaskRunner` starts the jobs the scheduler admits; the engine checks
requests, builds each job from its stores and settings, and delegates.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.api.datasets import DatasetInfo
from kubeml.api.schemas import (
    FunctionInfo,
    History,
    LogLine,
    TaskInfo,
    TaskState,
    TrainRequest,
    utc_now,
)
from kubeml.control.job.loop import TrainJob
from kubeml.control.job.ports import JobServices, Slots
from kubeml.control.records.checkpoints import CheckpointStore
from kubeml.control.records.functions import FunctionStore
from kubeml.control.records.metadata import MetadataStore
from kubeml.control.records.tasklog import TaskLogs
from kubeml.control.tasks.metrics import Metrics
from kubeml.control.tasks.policy import policy_for
from kubeml.control.tasks.progress import ProgressBook, RecordingRounds
from kubeml.control.tasks.registry import TaskRecorder, TaskRegistry
from kubeml.control.tasks.runner import TaskRunner
from kubeml.control.tasks.scheduler import Scheduler
from kubeml.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from kubeml.runtime.invocation import FunctionCode, Invocation, LogSink, Mode
from kubeml.settings import Settings
from kubeml.stores.datasets import ARRAY_FIELDS, DatasetStore
from kubeml.stores.interfaces import ControlModels

if TYPE_CHECKING:
    import numpy as np

    from kubeml.backends.base import FunctionBackend


class Engine:
    """Functions, datasets, train tasks, histories and inference on one backend."""

    def __init__(self, settings: Settings | None = None, *, backend: FunctionBackend | None = None):
        from kubeml.backends import create_backend

        self.settings = settings or Settings()
        self.home = Path(self.settings.home).expanduser()
        self.home.mkdir(parents=True, exist_ok=True)
        self.metadata = MetadataStore(self.home / "kubeml.db")
        self.backend = backend or create_backend(self.settings)  # it builds its stores
        self.datasets: DatasetStore = self.backend.datasets
        self.models: ControlModels = self.backend.models
        self.functions = FunctionStore(self.home / "functions", self.metadata)
        self.logs = TaskLogs(self.home / "logs", self.settings.log_max_lines)
        self.checkpoints = CheckpointStore(self.home / "checkpoints")
        self.metrics = Metrics()
        self.progress = ProgressBook(lambda name: self.datasets.get(name).train_size)
        self.tasks = TaskRegistry(self.metadata, self.metrics)
        self.scheduler = Scheduler(self.backend.capacity)
        self.runner = TaskRunner(
            self.tasks, self.scheduler, self.metadata, self.logs, self.metrics, self._job
        )
        # What an inference needs of a task's history, by the version of its trained
        # model: a warm call skips reading and parsing the whole history (every epoch).
        self._serving: dict[str, tuple[str, FunctionCode, str]] = {}
        self._closed = False
        self.runner.recover(self.settings.auto_resume)

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
        return self.functions.put(name, code, update=False)

    def update_function(self, name: str, code: str) -> FunctionInfo:
        return self.functions.put(name, code, update=True)

    def get_function(self, name: str) -> FunctionInfo:
        return self.functions.get(name)

    def list_functions(self) -> list[FunctionInfo]:
        return self.functions.list()

    def delete_function(self, name: str) -> None:
        self.functions.delete(name)

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

    def register_dataset(self, name: str, url: str) -> DatasetInfo:
        return self.datasets.register(name, url)

    def get_dataset(self, name: str) -> DatasetInfo:
        return self.datasets.get(name)

    def list_datasets(self) -> list[DatasetInfo]:
        return self.datasets.list()

    def delete_dataset(self, name: str) -> None:
        busy = [r.id for r in self.tasks.live() if r.info.request.dataset == name]
        if busy:
            raise ConflictError(f"dataset {name!r} is in use by task(s) {busy}; stop them first")
        self.datasets.delete(name)

    # -- train tasks ------------------------------------------------------------------------
    def train(self, request: TrainRequest | None = None, **fields: Any) -> str:
        """Queue a train task; returns its id. Fields are those of `TrainRequest`."""
        request = request or TrainRequest(**fields)
        self._check_plane(request)
        function = self.functions.get(request.function)
        self.datasets.get(request.dataset)
        task_id = self._new_task_id()
        info = TaskInfo(
            id=task_id,
            request=request,
            state=TaskState.QUEUED,
            parallelism=request.parallelism,
            function_sha256=function.sha256,
            created_at=utc_now(),
        )
        history = History(
            task_id=task_id, request=request, state=TaskState.QUEUED,
            function_sha256=function.sha256,  # infer needs it after `task prune`
        )  # fmt: skip
        self.runner.enqueue(info, history)
        return task_id

    def _check_plane(self, request: TrainRequest) -> None:
        """Shards, a sync precision and overlapped rounds need a backend whose functions
        can reach shards."""
        if request.overlap and request.shards == 0:
            raise InvalidInputError(
                "overlap=true with shards=0: overlapped rounds need parameter shards; the "
                "central merge's rounds wait for it (drop one of them)"
            )
        if self.backend.name == "ray":
            return
        if request.shards:
            raise InvalidInputError(
                f"shards={request.shards}: parameter shards need the ray backend; the "
                f"{self.backend.name} backend merges in shared memory (use 0 or leave it unset)"
            )
        if request.overlap:
            raise InvalidInputError(
                f"overlap=true: overlapped rounds need parameter shards (the ray backend); the "
                f"{self.backend.name} backend's rounds merge in shared memory (leave it unset)"
            )
        if request.sync_precision.value != "fp32":
            raise InvalidInputError(
                f"sync_precision={request.sync_precision.value}: a compressed sync needs "
                f"parameter shards (the ray backend); the {self.backend.name} backend merges "
                "in shared memory at fp32"
            )

    def resume_task(self, task_id: str) -> None:
        """Continue an interrupted or failed task from its last completed epoch."""
        info = self.get_task(task_id)
        if not info.state.finished:
            raise ConflictError(f"task {task_id!r} is {info.state.value}; nothing to resume")
        if info.state is TaskState.SUCCEEDED:
            raise InvalidInputError(f"task {task_id!r} is {info.state.value}; nothing to resume")
        history = self.metadata.get_history(task_id)
        info = info.model_copy(update={"state": TaskState.QUEUED, "error": None, "traceback": None})
        self.runner.enqueue(info, history.model_copy(update={"state": TaskState.QUEUED}))

    def _new_task_id(self) -> str:
        while True:
            task_id = secrets.token_hex(4)
            try:
                self.metadata.get_task(task_id)
            except NotFoundError:
                return task_id

    def _job(self, recorder: TaskRecorder, parallelism: int, slots: Slots) -> TrainJob:
        task_id, request = recorder.id, recorder.info.request
        services = JobServices(
            backend=self.backend,
            datasets=self.datasets,
            models=self.models,
            log=lambda source, message: self.logs.append(task_id, source, message),
            slots=slots,
            round_timeout_s=self.settings.round_timeout_s,
            checkpoints=self.checkpoints,
            torch_threads=self.settings.torch_threads,
        )
        return TrainJob(
            task_id,
            request,
            self.functions.code(request.function, recorder.info.function_sha256 or ""),
            parallelism,
            services,
            RecordingRounds(recorder, self.progress, task_id),
            policy_for(request.effective_policy.value),
            start_epoch=recorder.epochs_done,
            records=recorder.history().epochs,
            requests=recorder.requests,
        )

    def get_task(self, task_id: str) -> TaskInfo:
        live = self.live_task(task_id)
        return live if live is not None else self.metadata.get_task(task_id)

    def live_task(self, task_id: str) -> TaskInfo | None:
        """A queued or running task's state, from memory (no I/O: the event loop may ask);
        None for any other."""
        recorder = self.tasks.get(task_id)
        return recorder.info if recorder else None

    def list_tasks(self) -> list[TaskInfo]:
        live = {r.id: r.info for r in self.tasks.live()}
        return [live.get(t.id, t) for t in self.metadata.list_tasks()]

    def stop_task(self, task_id: str) -> TaskInfo:
        """Stop a task: a queued one at once, a running one at its next round boundary."""
        self.get_task(task_id)  # NotFoundError for an unknown task
        self.runner.stop(task_id)
        return self.get_task(task_id)

    def prune_tasks(self) -> list[str]:
        """Forget the records of finished tasks (their histories and models stay)."""
        pruned = [t.id for t in self.metadata.list_tasks() if t.state.finished]
        pruned += self.metadata.damaged_ids("task")  # unreadable, so not running either
        for task_id in pruned:
            self.metadata.delete_task(task_id)
        return pruned

    def wait(self, task_id: str, timeout_s: float | None = None) -> TaskInfo:
        """Block until the task has finished (or `timeout_s` passed); returns its state."""
        self.tasks.wait(task_id, timeout_s)
        return self.get_task(task_id)

    # -- histories --------------------------------------------------------------------------
    def get_history(self, task_id: str) -> History:
        recorder = self.tasks.get(task_id)
        return recorder.history() if recorder else self.metadata.get_history(task_id)

    def list_histories(self) -> list[History]:
        return self.metadata.list_histories()

    def delete_history(self, task_id: str) -> None:
        """Delete a finished task's history, trained model and log."""
        if task_id in self.tasks:
            raise ConflictError(f"task {task_id!r} is still running; stop it first")
        self.metadata.delete_history(task_id)
        self._serving.pop(task_id, None)
        self.models.delete_final(task_id)
        self.checkpoints.delete(task_id)
        self.logs.delete(task_id)

    def prune_histories(self) -> list[str]:
        pruned = [h.task_id for h in self.metadata.list_histories() if h.state.finished]
        for task_id in pruned:
            self.delete_history(task_id)
        return pruned

    # -- inference, logs, metrics -----------------------------------------------------------
    def infer(self, task_id: str, data: list[Any]) -> Any:
        """Predictions of a task's trained model for `data`, run by its function."""
        invocation = self._infer_invocation(task_id, data)
        with self.metrics.inferring():
            future = self.backend.invoke([invocation], sync=None, log=self._infer_log(task_id))[0]
            return future.result(timeout=self.settings.round_timeout_s).output

    async def infer_async(self, task_id: str, data: list[Any]) -> Any:
        """`infer` on the server's event loop: a warm worker's answer is awaited there, so
        a call crosses no thread (`FunctionBackend.serve`)."""
        invocation = self._infer_invocation(task_id, data)
        with self.metrics.inferring():
            result = await self.backend.serve(
                invocation, log=self._infer_log(task_id), timeout_s=self.settings.round_timeout_s
            )
        return result.output

    def _infer_invocation(self, task_id: str, data: list[Any]) -> Invocation:
        if not isinstance(data, list) or not data:
            raise InvalidInputError("infer data must be a non-empty JSON list of samples")
        version = self.models.final_version(task_id)
        known = self._serving.get(task_id)
        if known is None or known[0] != version:
            history = self.metadata.get_history(task_id)
            if version is None:
                raise NotFoundError(f"task {task_id!r} has no trained model yet")
            # The history, not the task record: a pruned task's model still infers.
            sha = history.function_sha256 or self.get_task(task_id).function_sha256 or ""
            function = self.functions.code(history.request.function, sha)
            known = self._serving[task_id] = (version, function, history.request.dataset)
        _, function, dataset = known
        return Invocation(
            mode=Mode.INFER,
            task_id=task_id,
            function=function,
            dataset=dataset,
            infer_data=data,
            threads=1,
            model_version=version,
        )

    def _infer_log(self, task_id: str) -> LogSink:
        def log(source: str, message: str) -> None:
            self.logs.append(task_id, f"infer/{source}", message)

        return log

    def logs_of(self, task_id: str, since: int = 0) -> list[LogLine]:
        self.get_task(task_id)
        return self.logs.read(task_id, since)

    def metrics_text(self) -> str:
        return self.metrics.render(running=len(self.scheduler.running()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.runner.close()
        self.backend.close()
        self.metadata.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
