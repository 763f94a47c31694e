"""Micro-benchmark (e): warm inference latency through the REST API of a real server.

    python -m benchmarks.micro_serve [--calls 300] [--samples 10]

A kubeml server on 127.0.0.1 (process backend, 2 slots) in a subprocess, as `kubeml
server start` runs it. The LeNet function trains 1 epoch on a 6,000-sample cut of
Fashion-MNIST; then `calls` sequential `POST /tasks/{id}/infer` requests with `samples`
test images each go through one keep-alive httpx client. The first calls (the cold start
of the serving path) are timed apart; the figures are the p50 and p99 of the rest, and
their ratios to the targets (p50 <= 5 ms, p99 <= 15 ms; a ratio <= 1 meets it).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/micro_serve.py` from anywhere
    sys.path.insert(0, str(ROOT))

TARGET_P50_S, TARGET_P99_S = 0.005, 0.015
_WARM_CALLS = 20  # untimed: the first load of the model and the first request's set-up
_TRAIN_SIZE, _TEST_SIZE = 6_000, 1_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _trained_task(client: Any) -> tuple[str, list[Any]]:
    """Deploy LeNet, upload the cut of Fashion-MNIST, train 1 epoch; (task id, 10 images)."""
    from benchmarks.data import load_fashion_mnist
    from benchmarks.reference import FUNCTION_FILE
    from kubeml.api.schemas import TaskState

    arrays = load_fashion_mnist(_TRAIN_SIZE, _TEST_SIZE)
    client.create_function("lenet", FUNCTION_FILE.read_text())
    client.create_dataset("fashion", arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y)
    task_id = client.train(
        function="lenet", dataset="fashion", epochs=1, parallelism=2, k=8, lr=0.01,
        batch_size=64, static=True,
    )  # fmt: skip
    info = client.wait(task_id, timeout_s=600, poll_s=0.2)
    if info.state is not TaskState.SUCCEEDED:
        raise RuntimeError(f"the training task {task_id} ended {info.state.value}: {info.error}")
    return task_id, arrays.test_x.tolist()


def serve_latency(quick: bool = False, calls: int = 300, samples: int = 10) -> dict[str, Any]:
    """p50/p99 of warm REST inference calls on a freshly trained task."""
    import httpx

    from kubeml.client import Client, ensure_server, stop_server
    from kubeml.settings import Settings

    calls = min(calls, 100) if quick else calls
    home = Path(tempfile.mkdtemp(prefix="kubeml-bench-serve-"))
    settings = Settings(
        home=home / "home", host="127.0.0.1", port=_free_port(), backend="process",
        capacity=2, shm_dir=home / "shm", api_token=None, url=None,
    )  # fmt: skip
    try:
        url = ensure_server(settings, quiet=True)
        with Client(url, token="") as client:
            task_id, images = _trained_task(client)
        body = {"data": images[:samples]}
        latencies: list[float] = []
        with httpx.Client(base_url=url, trust_env=False, timeout=30.0) as http:
            for _ in range(_WARM_CALLS + calls):
                started = time.perf_counter()
                response = http.post(f"/tasks/{task_id}/infer", json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or len(response.json()["predictions"]) != samples:
                    raise RuntimeError(f"infer answered {response.status_code}: {response.text}")
    finally:
        stop_server(settings, timeout_s=30)
        shutil.rmtree(home, ignore_errors=True)
    cold, warm = latencies[:_WARM_CALLS], sorted(latencies[_WARM_CALLS:])
    p50, p99 = _percentile(warm, 50), _percentile(warm, 99)
    return {
        "calls": calls,
        "samples_per_call": samples,
        "first_call_s": cold[0],
        "p50_s": p50,
        "p90_s": _percentile(warm, 90),
        "p99_s": p99,
        "max_s": warm[-1],
        "mean_s": statistics.fmean(warm),
        "p50_ratio": p50 / TARGET_P50_S,
        "p99_ratio": p99 / TARGET_P99_S,
        "target": f"p50 <= {TARGET_P50_S * 1e3:g} ms, p99 <= {TARGET_P99_S * 1e3:g} ms",
        "how": f"{calls} sequential REST calls after {_WARM_CALLS} untimed ones, one "
        "keep-alive httpx client, server in a subprocess (process backend)",
    }


def serve_line(result: dict[str, Any]) -> str:
    return (
        f"serving ({result['samples_per_call']} samples, {result['calls']} warm REST calls): "
        f"p50 {result['p50_s'] * 1e3:.2f} ms (ratio {result['p50_ratio']:.2f}), "
        f"p99 {result['p99_s'] * 1e3:.2f} ms (ratio {result['p99_ratio']:.2f}), "
        f"max {result['max_s'] * 1e3:.1f} ms, first call {result['first_call_s'] * 1e3:.0f} ms "
        f"(target {result['target']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    print(serve_line(serve_latency(calls=args.calls, samples=args.samples)))


if __name__ == "__main__":
    main()
