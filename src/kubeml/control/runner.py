"""The task runner: queues tasks, starts the jobs the scheduler admits, records their end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial

from kubeml.api.schemas import History, TaskInfo, TaskState
from kubeml.control.job import JobOutcome, TrainJob
from kubeml.control.metadata import MetadataStore
from kubeml.control.metrics import Metrics
from kubeml.control.scheduler import Admit, Scheduler
from kubeml.control.tasklog import TaskLogs
from kubeml.control.tasks import TaskRecorder, TaskRegistry
from kubeml.errors import KubeMLError

# (the task's recorder, its parallelism, how it asks for N slots) -> the job to run
JobFactory = Callable[[TaskRecorder, int, Callable[[int], int]], TrainJob]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class TaskRunner:
    """Acts on the scheduler's decisions: each admitted task's job runs on its own thread."""

    def __init__(
        self,
        tasks: TaskRegistry,
        scheduler: Scheduler,
        metadata: MetadataStore,
        logs: TaskLogs,
        metrics: Metrics,
        make_job: JobFactory,
    ) -> None:
        self.tasks, self.scheduler = tasks, scheduler
        self._metadata, self._logs, self._metrics = metadata, logs, metrics
        self._make_job = make_job
        self._interrupted: set[str] = set()  # tasks a shutdown stopped at a round boundary
        self._stopped: set[str] = set()  # tasks their user stopped

    def enqueue(self, info: TaskInfo, history: History) -> None:
        """Persist a queued task and submit it; a refused one leaves no trace."""
        self._metadata.put_task(info)
        self._metadata.put_history(history)
        self.tasks.add(info, history)
        self._logs.append(info.id, "job", f"task queued: {info.request.model_dump_json()}")
        try:
            admitted = self.scheduler.submit(info.id, info.parallelism)
        except KubeMLError:
            self.tasks.remove(info.id)
            self._metadata.delete_task(info.id)
            self._metadata.delete_history(info.id)
            self._logs.delete(info.id)
            raise
        self._start(admitted)

    def stop(self, task_id: str) -> None:
        """A queued task ends at once; a running job stops at its next round boundary."""
        recorder = self.tasks.get(task_id)
        if recorder is None:
            return
        self._stopped.add(task_id)
        if self.scheduler.cancel(task_id):
            self._finish(recorder, JobOutcome(TaskState.STOPPED))
        else:
            self.tasks.stop(task_id)  # admitted: its job stops, even one not built yet

    def close(self, timeout_s: float = 30.0) -> None:
        # Tasks running now that their user did not stop are resumed at the next start.
        self._interrupted = {r.id for r in self.tasks.live()} - self._stopped
        for job in self.tasks.jobs():
            job.stop()
        for recorder in self.tasks.live():
            self.tasks.wait(recorder.id, timeout_s)

    def _start(self, admitted: list[Admit]) -> None:
        for admit in admitted:
            recorder = self.tasks.get(admit.task_id)
            if recorder is None:  # gone between its admission and now: free its slots
                self._start(self.scheduler.finished(admit.task_id))
                continue
            task_id = recorder.id
            job = self._make_job(recorder, admit.parallelism, partial(self._resize, task_id))
            self.tasks.attach(task_id, job)
            recorder.update(state=TaskState.RUNNING, started_at=_now())
            recorder.persist()  # the history's state follows the task's: running
            threading.Thread(
                target=self._run, args=(job, recorder), daemon=True, name=f"kubeml-job-{task_id}"
            ).start()

    def _resize(self, task_id: str, wanted: int) -> int:
        grant = self.scheduler.resize(task_id, wanted)
        self._start(grant.admitted)
        return grant.parallelism

    def _run(self, job: TrainJob, recorder: TaskRecorder) -> None:
        outcome = JobOutcome(TaskState.FAILED, "the job did not report an outcome")
        try:
            outcome = job.run()
        finally:
            self._finish(recorder, outcome)

    def _finish(self, recorder: TaskRecorder, outcome: JobOutcome) -> None:
        if recorder.id in self._interrupted and outcome.state is TaskState.STOPPED:
            # Shutdown, not the user, stopped it: left queued, the next start resumes it.
            outcome = JobOutcome(TaskState.QUEUED, "interrupted by a server shutdown")
        self._stopped.discard(recorder.id)
        recorder.update(
            state=outcome.state,
            error=outcome.error,
            traceback=outcome.traceback,
            finished_at=_now(),
        )
        recorder.persist()
        self._metrics.task_finished(recorder.id, outcome.state.value)
        self.tasks.remove(recorder.id)
        self._start(self.scheduler.finished(recorder.id))
