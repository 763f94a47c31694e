"""The task runner: queues tasks, acts on the scheduler's decisions, records their end."""

from __future__ import annotations

import threading
from collections.abc import Callable

from kubeml.api.schemas import History, PolicyName, TaskInfo, TaskState, utc_now
from kubeml.control.job.loop import TrainJob
from kubeml.control.job.ports import JobOutcome, Slots
from kubeml.control.job.state import StopCause
from kubeml.control.records.metadata import MetadataStore
from kubeml.control.records.tasklog import TaskLogs
from kubeml.control.tasks.metrics import Metrics
from kubeml.control.tasks.registry import TaskRecorder, TaskRegistry
from kubeml.control.tasks.scheduler import Admit, Decision, Grant, Scheduler
from kubeml.errors import KubeMLError, StorageError

# (the task's recorder, its parallelism, how it asks for slots) -> the job to run
JobFactory = Callable[[TaskRecorder, int, Slots], TrainJob]


class TaskRunner:
    """Acts on the scheduler's decisions: each admitted task's job runs on its own thread,
    and a resize goes to the job, which takes it at its next round boundary."""

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
        self._closing = False

    def enqueue(self, info: TaskInfo, history: History) -> None:
        """Persist a queued task and submit it; a refused one leaves no trace."""
        self._metadata.put_task(info)
        self._metadata.put_history(history)
        self.tasks.add(info, history)
        self._logs.append(info.id, "job", f"task queued: {info.request.model_dump_json()}")
        try:
            elastic = info.request.effective_policy is not PolicyName.STATIC
            decisions = self.scheduler.submit(info.id, info.parallelism, elastic=elastic)
        except KubeMLError:
            self.tasks.remove(info.id)
            self._metadata.delete_task(info.id)
            self._metadata.delete_history(info.id)
            self._logs.delete(info.id)
            raise
        self._act(decisions)

    def stop(self, task_id: str) -> None:
        """A queued task ends at once; a running job stops at its next round boundary."""
        recorder = self.tasks.get(task_id)
        if recorder is None:
            return
        recorder.requests.stop(StopCause.USER)  # admitted: its job stops, even one not built yet
        if self.scheduler.cancel(task_id):
            self._finish(recorder, JobOutcome(TaskState.STOPPED))

    def recover(self, auto_resume: bool) -> None:
        """Tasks that were running when the control plane went down: resumed from their
        last checkpoint (`auto_resume`), or marked resumable by hand."""
        for info in self._metadata.list_tasks():
            if info.state.finished:
                continue
            if auto_resume:
                self._logs.append(
                    info.id, "job", "the control plane restarted: resuming from the last checkpoint"
                )
                history = self._metadata.get_history(info.id)
                n = min(info.parallelism, self.scheduler.capacity)  # the job re-splits to it
                queued = info.model_copy(update={"state": TaskState.QUEUED, "parallelism": n})
                try:
                    self.enqueue(queued, history.model_copy(update={"state": TaskState.QUEUED}))
                except StorageError as exc:  # a full home: the server still starts
                    failed = {"state": TaskState.FAILED, "finished_at": utc_now(), "error":
                              f"interrupted, and not resumed at this start: {exc}; "
                              f"`kubeml task resume --id {info.id}` continues from the last "
                              "checkpoint"}  # fmt: skip
                    self._metadata.put_task(info.model_copy(update=failed), keep=True)
                continue
            try:
                done = len(self._metadata.get_history(info.id).epochs)
            except KubeMLError:  # no history, or a damaged one: the start must not fail
                done = 0
            self._metadata.put_task(
                info.model_copy(
                    update={
                        "state": TaskState.FAILED,
                        "finished_at": utc_now(),
                        "error": f"interrupted: the control plane stopped during this task; "
                        f"`kubeml task resume --id {info.id}` continues after epoch {done}",
                    }
                ),
                keep=True,  # a full home must not stop the server's start
            )

    def close(self, timeout_s: float = 30.0) -> None:
        # Tasks running now that their user did not stop are resumed at the next start;
        # queued ones stay queued, and none starts from here on (a slot freed meanwhile).
        self._closing = True
        live = self.tasks.live()
        for recorder in live:
            recorder.requests.stop(StopCause.SHUTDOWN)
        for recorder in live:
            if recorder.info.state is TaskState.RUNNING:
                self.tasks.wait(recorder.id, timeout_s)

    def _act(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Admit):
                self._start(decision)
            else:
                self.tasks.request_parallelism(
                    decision.task_id, decision.parallelism, decision.reason
                )

    def _start(self, admit: Admit) -> None:
        recorder = self.tasks.get(admit.task_id)
        if recorder is None:  # gone between its admission and now: free its slots
            self._act(self.scheduler.finished(admit.task_id))
            return
        if self._closing:
            return  # left queued: the next start resumes it
        task_id = recorder.id
        try:
            job = self._make_job(recorder, admit.parallelism, _TaskSlots(self, task_id))
        except KubeMLError as exc:  # e.g. a resumed task whose dataset was deleted since
            self._finish(recorder, JobOutcome(TaskState.FAILED, f"the task cannot start: {exc}"))
            return
        recorder.update(state=TaskState.RUNNING, started_at=utc_now())
        recorder.persist()  # the history's state follows the task's: running
        threading.Thread(
            target=self._run, args=(job, recorder), daemon=True, name=f"kubeml-job-{task_id}"
        ).start()

    def _granted(self, grant: Grant) -> int:
        self._act(grant.decisions)
        return grant.parallelism

    def _run(self, job: TrainJob, recorder: TaskRecorder) -> None:
        outcome = JobOutcome(TaskState.FAILED, "the job did not report an outcome")
        try:
            outcome = job.run()
        finally:
            self._finish(recorder, outcome)

    def _finish(self, recorder: TaskRecorder, outcome: JobOutcome) -> None:
        shutdown = recorder.requests.stop_cause is StopCause.SHUTDOWN
        if shutdown and outcome.state is TaskState.STOPPED:
            # Shutdown, not the user, stopped it: left queued, the next start resumes it.
            outcome = JobOutcome(TaskState.QUEUED, "interrupted by a server shutdown")
        recorder.update(
            state=outcome.state,
            error=outcome.error,
            traceback=outcome.traceback,
            finished_at=utc_now(),
        )
        recorder.persist()
        self._metrics.task_finished(recorder.id, outcome.state.value)
        self.tasks.remove(recorder.id)
        self._act(self.scheduler.finished(recorder.id))


class _TaskSlots:
    """A job's `Slots`: its task's requests to the scheduler, whose decisions the runner
    acts on (a shrink admits queued tasks, a growth may resize others)."""

    def __init__(self, runner: TaskRunner, task_id: str) -> None:
        self._runner, self._task_id = runner, task_id

    def want(self, parallelism: int) -> int:
        runner = self._runner
        return runner._granted(runner.scheduler.resize(self._task_id, parallelism))

    def answer(self, parallelism: int) -> int:
        runner = self._runner
        return runner._granted(runner.scheduler.answer(self._task_id, parallelism))

    def busy(self) -> int:
        return sum(self._runner.scheduler.running().values())
