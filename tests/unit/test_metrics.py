"""The Prometheus exposition: 2021 names, typed running counts, finished tasks' retention."""

from __future__ import annotations

import re
import threading

from kubeml.control.tasks.metrics import Metrics


def _samples(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_running_tasks_are_counted_by_type_and_inference_while_it_runs() -> None:
    metrics = Metrics()
    assert _samples(metrics.render(running=0))['kubeml_job_running_total{type="train"}'] == 0
    entered, release = threading.Event(), threading.Event()

    def infer() -> None:
        with metrics.inferring():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=infer)
    worker.start()
    entered.wait(10)
    during = _samples(metrics.render(running=3))
    release.set()
    worker.join()
    after = _samples(metrics.render(running=3))
    assert during['kubeml_job_running_total{type="train"}'] == 3
    assert during['kubeml_job_running_total{type="inference"}'] == 1
    assert after['kubeml_job_running_total{type="inference"}'] == 0


def test_failure_counter_has_a_sample_for_every_task_that_invoked() -> None:
    metrics = Metrics()
    metrics.inc("kubeml_job_function_invocations_total", "ok", 2)
    metrics.inc("kubeml_job_function_invocations_total", "bad", 2)
    metrics.inc("kubeml_job_function_failures_total", "bad", 1)
    metrics.inc("kubeml_job_function_invocations_total", "ok", 2)  # later rounds keep the 0
    samples = _samples(metrics.render(running=0))
    assert samples['kubeml_job_function_failures_total{jobid="ok"}'] == 0
    assert samples['kubeml_job_function_failures_total{jobid="bad"}'] == 1
    assert samples['kubeml_job_function_invocations_total{jobid="ok"}'] == 4


def test_a_finished_tasks_last_values_stay_for_the_retention_then_go() -> None:
    clock = Clock()
    metrics = Metrics(retention_s=60, clock=clock)
    metrics.set("kubeml_job_validation_accuracy", "t1", 91.5)
    metrics.inc("kubeml_job_rounds_total", "t1", 7)
    metrics.task_finished("t1", "succeeded")
    clock.now += 59
    kept = _samples(metrics.render(running=0))
    assert kept['kubeml_job_validation_accuracy{jobid="t1"}'] == 91.5
    assert kept['kubeml_task_finished{jobid="t1",state="succeeded"}'] == 1
    clock.now += 2
    gone = _samples(metrics.render(running=0))
    assert 'kubeml_job_validation_accuracy{jobid="t1"}' not in gone
    assert 'kubeml_task_finished{jobid="t1",state="succeeded"}' not in gone
    assert gone['kubeml_job_rounds_total{jobid="t1"}'] == 7  # counters never go back


def test_a_resumed_task_is_live_again() -> None:
    clock = Clock()
    metrics = Metrics(retention_s=60, clock=clock)
    metrics.set("kubeml_job_train_loss", "t1", 0.5)
    metrics.task_finished("t1", "stopped")
    metrics.set("kubeml_job_train_loss", "t1", 0.4)  # its first epoch after the resume
    clock.now += 3600
    samples = _samples(metrics.render(running=1))
    assert samples['kubeml_job_train_loss{jobid="t1"}'] == 0.4
    assert not any(key.startswith("kubeml_task_finished{") for key in samples)


def test_every_series_has_help_and_type() -> None:
    text = Metrics().render(running=0)
    names = set(re.findall(r"^# TYPE (\w+) (?:gauge|counter)$", text, re.M))
    assert names == set(re.findall(r"^# HELP (\w+) ", text, re.M))
    assert {"kubeml_job_train_loss", "kubeml_job_validation_loss", "kubeml_job_parallelism",
            "kubeml_job_epoch_duration_seconds", "kubeml_job_running_total"} <= names  # fmt: skip
