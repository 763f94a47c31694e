"""Micro-benchmarks (b) cold start and (c) CLI start.

(b) `train` submitted -> first batch trained, for the reference LeNet function at N=2.
The function logs after its batch 0 (`logging.info` every 200 batches); the task log
stamps each line as the control plane receives it, so the first batch's time is that
stamp minus the submit time. "warm": the engine's workers already ran this function
(the serverless warm container). "cold": a fresh engine whose backend has no worker yet;
"cold, spawn all first": the same with a proposed change patched into the control plane.
Each measured task is stopped once every function has trained its first batch.

(c) wall time of `kubeml --help` and `kubeml task list` in fresh subprocesses, with the
interpreter's own start (`python -c pass`) for reference. Skipped while the CLI is absent.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.records import Workload
from benchmarks.reference import free_port, now
from benchmarks.rows_kubeml import deploy_reference, fresh_engine, prewarm, train_request

_FIRST_BATCH_TIMEOUT_S = 300.0


def _first_batch_s(engine: Any, workload: Workload, parallelism: int) -> tuple[float, float]:
    """(first function, all functions) seconds from submit to their first trained batch."""
    submitted = now()
    task_id = engine.train(**train_request(workload, parallelism, 8, epochs=1, validate_every=0))
    seen: dict[str, float] = {}
    deadline = time.monotonic() + _FIRST_BATCH_TIMEOUT_S
    try:
        while len(seen) < parallelism:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"task {task_id}: no first batch after {_FIRST_BATCH_TIMEOUT_S} s"
                )
            for line in engine.logs_of(task_id):
                if line.source.startswith("function-") and " batch 0:" in line.message:
                    seen.setdefault(line.source, line.time.timestamp())
            if engine.get_task(task_id).state.finished:
                break
            time.sleep(0.01)
    finally:
        engine.stop_task(task_id)
        engine.wait(task_id, timeout_s=120)
    if len(seen) < parallelism:
        raise RuntimeError(f"task {task_id} ended before every function trained a batch")
    return min(seen.values()) - submitted, max(seen.values()) - submitted


@contextmanager
def _spawn_all_workers_first() -> Iterator[None]:
    """A proposal, patched into this process (the control plane): start the task's N
    workers before its init invocation, so they import torch side by side instead of one
    for the init and the rest only when the first epoch needs them."""
    from kubeml.control.job import TrainJob

    original = TrainJob._initialise

    def initialise(self: Any) -> None:
        warm = getattr(self.services.backend, "warm", None)
        if warm is not None:
            warm(self.parallelism)
        original(self)

    TrainJob._initialise = initialise
    try:
        yield
    finally:
        TrainJob._initialise = original


def cold_start(workload: Workload, quick: bool, parallelism: int = 2) -> dict[str, Any]:
    warm_reps, cold_reps = (2, 1) if quick else (5, 3)
    warm, cold = [], []
    with fresh_engine() as engine:
        deploy_reference(engine, workload.data_dir)
        prewarm(engine, workload, parallelism)
        for _ in range(warm_reps):
            warm.append(_first_batch_s(engine, workload, parallelism))
    cold_spawn_all = []
    for _ in range(cold_reps):
        with fresh_engine() as engine:
            deploy_reference(engine, workload.data_dir)
            cold.append(_first_batch_s(engine, workload, parallelism))
        with fresh_engine() as engine, _spawn_all_workers_first():
            deploy_reference(engine, workload.data_dir)
            cold_spawn_all.append(_first_batch_s(engine, workload, parallelism))
    imports = [_run_s([sys.executable, "-c", "import torch, kubeml.sdk"]) for _ in range(3)]
    return {
        "parallelism": parallelism,
        "worker_import_floor_s": statistics.median(imports),
        "warm_s": statistics.median(t for _, t in warm),
        "cold_s": statistics.median(t for _, t in cold),
        "warm_first_function_s": statistics.median(t for t, _ in warm),
        "cold_first_function_s": statistics.median(t for t, _ in cold),
        "cold_spawn_all_first_s": statistics.median(t for _, t in cold_spawn_all),
        "samples": {"warm": warm, "cold": cold, "cold_spawn_all_first": cold_spawn_all},
        "target": "warm <= 1 s, cold <= 5 s",
        "how": "submit -> every function's first batch trained (task-log stamps), median",
    }


def _run_s(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - t


def _time_command(argv: list[str], env: dict[str, str], reps: int) -> dict[str, Any]:
    times, last = [], None
    for _ in range(reps):
        t = time.perf_counter()
        last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t)
    assert last is not None
    return {
        "median_s": statistics.median(times),
        "samples_s": times,
        "exit_code": last.returncode,
        "stderr_tail": last.stderr[-300:] if last.returncode else "",
    }


def cli_start(quick: bool) -> dict[str, Any]:
    if importlib.util.find_spec("kubeml.cli.app") is None:
        return {"skipped": "the CLI (kubeml.cli.app) is not there yet"}
    script = Path(sys.executable).with_name("kubeml")
    kubeml = [str(script)] if script.exists() else [sys.executable, "-m", "kubeml"]
    reps = 3 if quick else 7
    home = Path(tempfile.mkdtemp(prefix="kubeml-bench-cli-"))
    # A private home and port: never talk to (or start) someone else's server.
    env = {**os.environ, "KUBEML_HOME": str(home), "KUBEML_PORT": str(free_port())}
    try:
        out: dict[str, Any] = {
            "python -c pass": _time_command([sys.executable, "-c", "pass"], env, reps),
            "kubeml --help": _time_command([*kubeml, "--help"], env, reps),
            # The first call finds no server and starts one; the rest talk to it.
            "kubeml task list (first: starts the server)": _time_command(
                [*kubeml, "task", "list"], env, 1
            ),
            "kubeml task list": _time_command([*kubeml, "task", "list"], env, reps),
        }
    finally:
        subprocess.run([*kubeml, "server", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    out["target"] = "<= 0.3 s"
    return out
