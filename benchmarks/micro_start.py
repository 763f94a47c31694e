"""Micro-benchmarks (b) cold start and (c) CLI start.

(b) `train` submitted -> first batch trained, for the reference LeNet function at N=2,
read from what the control plane reports to a user: the task's progress (the round
points `task watch` and the dashboard draw). The task runs with K=1, so its first round
point is stamped when every function has trained its first batch and that round merged
(one merge of LeNet's 62k parameters: well under a millisecond). "warm": the engine's
workers already ran this function (the serverless warm container). "cold": a fresh engine
whose backend has no worker yet (the job starts all N before its init invocation). Each
measured task is stopped at its first round.

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
from pathlib import Path
from typing import Any

from benchmarks.records import Workload
from benchmarks.reference import free_port, now
from benchmarks.rows_kubeml import deploy_reference, fresh_engine, prewarm, train_request

_FIRST_BATCH_TIMEOUT_S = 300.0


def _first_batch_s(engine: Any, workload: Workload, parallelism: int) -> float:
    """Seconds from submit to the task's first round point: every function trained a batch."""
    submitted = now()
    request = train_request(workload, parallelism, 1, epochs=1, validate_every=0)
    task_id = engine.train(**request)
    deadline = time.monotonic() + _FIRST_BATCH_TIMEOUT_S
    try:
        while not (points := engine.progress.rounds(task_id)):
            if engine.get_task(task_id).state.finished:
                raise RuntimeError(f"task {task_id} ended before its first round")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"task {task_id}: no first round after {_FIRST_BATCH_TIMEOUT_S} s"
                )
            time.sleep(0.005)
    finally:
        engine.stop_task(task_id)
        engine.wait(task_id, timeout_s=120)
    return points[0].time.timestamp() - submitted


def cold_start(workload: Workload, quick: bool, parallelism: int = 2) -> dict[str, Any]:
    warm_reps, cold_reps = (2, 1) if quick else (5, 3)
    with fresh_engine() as engine:
        deploy_reference(engine, workload.data_dir)
        prewarm(engine, workload, parallelism)
        warm = [_first_batch_s(engine, workload, parallelism) for _ in range(warm_reps)]
    cold = []
    for _ in range(cold_reps):
        with fresh_engine() as engine:
            deploy_reference(engine, workload.data_dir)
            cold.append(_first_batch_s(engine, workload, parallelism))
    imports = [_run_s([sys.executable, "-c", "import torch, kubeml.sdk"]) for _ in range(3)]
    return {
        "parallelism": parallelism,
        "worker_import_floor_s": statistics.median(imports),
        "warm_s": statistics.median(warm),
        "cold_s": statistics.median(cold),
        "samples": {"warm": warm, "cold": cold},
        "target": "warm <= 1 s, cold <= 2 s",
        "how": "submit -> the task's first round point at K=1 (every function trained a "
        "batch; task progress stamps), median",
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
