"""Prometheus metrics, with the 2021 `kubeml_job_*` names so its dashboards still read them."""

from __future__ import annotations

import threading
from collections import defaultdict

_HELP = {
    "kubeml_job_validation_loss": ("gauge", "Validation loss of the last validated epoch"),
    "kubeml_job_validation_accuracy": ("gauge", "Validation accuracy (percent)"),
    "kubeml_job_train_loss": ("gauge", "Mean train loss of the last epoch"),
    "kubeml_job_parallelism": ("gauge", "Functions (N) running the task"),
    "kubeml_job_epoch_duration_seconds": ("gauge", "Duration of the last epoch (not cumulative)"),
    "kubeml_job_samples_per_second": ("gauge", "Training throughput of the last epoch"),
    "kubeml_job_running_total": ("gauge", "Train tasks running now"),
    "kubeml_job_rounds_total": ("counter", "K-AVG rounds merged"),
    "kubeml_job_function_invocations_total": ("counter", "Function invocations started"),
    "kubeml_job_function_failures_total": ("counter", "Function invocations that failed"),
}


class Metrics:
    """Per-task gauges and counters; a finished task's gauges are dropped, counters kept."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, float]] = defaultdict(dict)
        self._lock = threading.Lock()

    def set(self, name: str, task_id: str, value: float) -> None:
        with self._lock:
            self._values[name][task_id] = float(value)

    def inc(self, name: str, task_id: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[name][task_id] = self._values[name].get(task_id, 0.0) + amount

    def forget_gauges(self, task_id: str) -> None:
        with self._lock:
            for name, (kind, _) in _HELP.items():
                if kind == "gauge":
                    self._values[name].pop(task_id, None)

    def render(self, running: int) -> str:
        lines = []
        with self._lock:
            for name, (kind, help_text) in _HELP.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if name == "kubeml_job_running_total":
                    lines.append(f"{name} {running}")
                    continue
                for task_id, value in sorted(self._values[name].items()):
                    lines.append(f'{name}{{jobid="{task_id}"}} {value}')
        return "\n".join(lines) + "\n"
