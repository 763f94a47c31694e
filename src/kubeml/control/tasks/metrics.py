"""Prometheus metrics, with the 2021 `kubeml_job_*` names so its dashboards still read them."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_HELP = {
    "kubeml_job_validation_loss": ("gauge", "Validation loss of the last validated epoch"),
    "kubeml_job_validation_accuracy": ("gauge", "Validation accuracy (percent)"),
    "kubeml_job_train_loss": ("gauge", "Mean train loss of the last epoch"),
    "kubeml_job_parallelism": ("gauge", "Functions (N) running the task"),
    "kubeml_job_epoch_duration_seconds": ("gauge", "Duration of the last epoch (not cumulative)"),
    "kubeml_job_samples_per_second": ("gauge", "Training throughput of the last epoch"),
    "kubeml_job_running_total": ("gauge", "Tasks running now, by type (train or inference)"),
    "kubeml_job_rounds_total": ("counter", "K-AVG rounds merged"),
    "kubeml_job_function_invocations_total": ("counter", "Function invocations started"),
    "kubeml_job_function_failures_total": ("counter", "Function invocations that failed"),
    "kubeml_task_finished": ("gauge", "1 for a task that ended, labelled with its final state"),
}
_TYPES = ("train", "inference")
# Prometheus scrapes every 15-60 s: a finished task's last values stay this long, so the
# scrape after its last epoch still sees them (and Grafana's last point is the final one).
FINISHED_RETENTION_S = 600.0


class Metrics:
    """Per-task gauges and counters; a finished task's gauges stay for a retention window.

    Args:
        retention_s: how long the gauges of a finished task stay exported.
        clock: seconds (monotonic); tests pass their own.
    """

    def __init__(
        self,
        retention_s: float = FINISHED_RETENTION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._values: dict[str, dict[str, float]] = defaultdict(dict)
        self._finished: dict[str, tuple[float, str]] = {}  # task -> (when, final state)
        self._inferring = 0
        self._retention_s = retention_s
        self._clock = clock
        self._lock = threading.Lock()

    def set(self, name: str, task_id: str, value: float) -> None:
        with self._lock:
            self._values[name][task_id] = float(value)
            self._finished.pop(task_id, None)  # a resumed task is live again

    def inc(self, name: str, task_id: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[name][task_id] = self._values[name].get(task_id, 0.0) + amount
            if name == "kubeml_job_function_invocations_total":
                # A counter with no sample reads as "no data", not as "no failures".
                self._values["kubeml_job_function_failures_total"].setdefault(task_id, 0.0)

    def task_finished(self, task_id: str, state: str) -> None:
        """The task ended: its gauges stay `retention_s` more, then go."""
        with self._lock:
            self._finished[task_id] = (self._clock(), state)

    @contextmanager
    def inferring(self) -> Iterator[None]:
        """Counts an inference as a running `inference` task while the block runs."""
        with self._lock:
            self._inferring += 1
        try:
            yield
        finally:
            with self._lock:
                self._inferring -= 1

    def render(self, running: int) -> str:
        """The text exposition; `running` is the number of train tasks running now."""
        lines = []
        with self._lock:
            self._expire()
            for name, (kind, help_text) in _HELP.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if name == "kubeml_job_running_total":
                    counts = dict(zip(_TYPES, (running, self._inferring), strict=True))
                    lines += [f'{name}{{type="{kind}"}} {n}' for kind, n in counts.items()]
                elif name == "kubeml_task_finished":
                    lines += [
                        f'{name}{{jobid="{task_id}",state="{state}"}} 1'
                        for task_id, (_, state) in sorted(self._finished.items())
                    ]
                else:
                    for task_id, value in sorted(self._values[name].items()):
                        lines.append(f'{name}{{jobid="{task_id}"}} {value}')
        return "\n".join(lines) + "\n"

    def _expire(self) -> None:
        cutoff = self._clock() - self._retention_s
        for task_id in [t for t, (when, _) in self._finished.items() if when < cutoff]:
            del self._finished[task_id]
            for name, (kind, _) in _HELP.items():
                if kind == "gauge":
                    self._values[name].pop(task_id, None)
