"""Micro-benchmark (e): warm inference latency through the REST API of a real server.

    python -m benchmarks.micro_serve [--calls 300] [--samples 10]

A kubeml server on 127.0.0.1 (process backend, 2 slots) in a subprocess, as `kubeml
server start` runs it. The LeNet function trains 1 epoch on a 6,000-sample cut of
Fashion-MNIST; then `calls` sequential `POST /tasks/{id}/infer` requests with `samples`
test images each go to the server once it and its workers are idle, interleaved from
three callers: a keep-alive `http.client` connection sending a body encoded once (the
server's round trip, as a load generator sees it), kubeml's Python client
(`Client.infer`), and a plain httpx client encoding JSON per call. The first calls (the cold start
of the serving path) are timed apart; the figures are the p50 and p99 of the rest, and
their ratios to the targets (p50 <= 5 ms, p99 <= 15 ms; a ratio <= 1 meets it).
`--baseline DIR` serves another checkout (e.g. `git worktree add DIR main`) from a second
server and alternates the calls between the two (ABBA), so a before/after ratio is
measured under one load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/micro_serve.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.reference import free_port, wait_quiet  # noqa: E402 - needs ROOT on sys.path

TARGET_P50_S, TARGET_P99_S = 0.005, 0.015
_WARM_CALLS = 20  # untimed: the first load of the model and the first request's set-up
_TRAIN_SIZE, _TEST_SIZE = 6_000, 1_000


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


@contextmanager
def _server(workdir: Path, source: Path | None) -> Iterator[str]:
    """A server on a free port and a fresh home; `source`: run that checkout's src/ instead."""
    from kubeml.client import ensure_server, stop_server
    from kubeml.settings import Settings

    settings = Settings(
        home=workdir / "home", host="127.0.0.1", port=free_port(), backend="process",
        capacity=2, shm_dir=workdir / "shm", api_token=None, url=None,
    )  # fmt: skip
    saved = os.environ.get("PYTHONPATH")
    try:
        if source is not None:  # the server and its workers import the other checkout
            os.environ["PYTHONPATH"] = str(source / "src")
        try:
            url = ensure_server(settings, quiet=True)
        finally:
            if source is not None:
                os.environ.pop("PYTHONPATH", None)
                if saved is not None:
                    os.environ["PYTHONPATH"] = saved
        yield url
    finally:
        stop_server(settings, timeout_s=30)


_CLIENTS = ("raw", "client", "httpx")


class _Callers:
    """Three ways to call one server's infer route: `raw`, a keep-alive `http.client`
    connection sending a body encoded once, which times the server's round trip;
    `client`, kubeml's `Client.infer`; `httpx`, a plain httpx client (JSON encoded per
    call), which is what `Client.infer` did before it kept its own connection."""

    def __init__(self, url: str, task_id: str, data: list[Any]) -> None:
        import http.client

        import httpx

        from kubeml.client import Client

        self.path, self.data, self.task_id = f"/tasks/{task_id}/infer", data, task_id
        self._client = Client(url, token="")
        self._body = json.dumps({"data": data}).encode()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._raw = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)
        self._httpx = httpx.Client(base_url=url, trust_env=False, timeout=30.0)

    def call(self, kind: str) -> list[Any]:
        if kind == "client":
            answer: list[Any] = self._client.infer(self.task_id, self.data)
            return answer
        if kind == "httpx":
            response = self._httpx.post(self.path, json={"data": self.data})
            status, text = response.status_code, response.text
        else:
            self._raw.request(
                "POST", self.path, body=self._body, headers={"content-type": "application/json"}
            )
            answer = self._raw.getresponse()
            status, text = answer.status, answer.read().decode()
        if status != 200:
            raise RuntimeError(f"infer answered {status}: {text}")
        predictions: list[Any] = json.loads(text)["predictions"]
        return predictions

    def __enter__(self) -> _Callers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()
        self._httpx.close()
        self._client.close()


def _figures(latencies: list[float], calls: int, samples: int) -> dict[str, Any]:
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
    }


def serve_latency(
    quick: bool = False, calls: int = 300, samples: int = 10, baseline: Path | None = None
) -> dict[str, Any]:
    """p50/p99 of warm REST inference calls on a freshly trained task.

    With `baseline` (another checkout of kubeml), a second server runs that code and the
    calls alternate between the two, so both see the same load on a shared machine.
    """
    from kubeml.client import Client

    calls = min(calls, 100) if quick else calls
    variants = {"this tree": None} | ({"baseline": baseline} if baseline else {})
    workdir = Path(tempfile.mkdtemp(prefix="kubeml-bench-serve-"))
    latencies = {(name, kind): [] for name in variants for kind in _CLIENTS}
    settled_s: list[float] = []
    try:
        with ExitStack() as stack:
            targets = {}
            for index, (name, source) in enumerate(variants.items()):
                url = stack.enter_context(_server(workdir / str(index), source))
                with Client(url, token="") as client:
                    task_id, images = _trained_task(client)
                    pid = client.health()["pid"]
                targets[name] = stack.enter_context(_Callers(url, task_id, images[:samples]))
                settled_s.append(wait_quiet(pid))  # the spare worker has imported torch
            for index in range(_WARM_CALLS + calls):
                order = list(targets) if index % 2 == 0 else list(targets)[::-1]  # ABBA
                for kind in _CLIENTS:
                    for name in order:
                        started = time.perf_counter()
                        predictions = targets[name].call(kind)
                        latencies[name, kind].append(time.perf_counter() - started)
                        if len(predictions) != samples:
                            raise RuntimeError(f"infer answered {predictions!r}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = _figures(latencies["this tree", "raw"], calls, samples)
    result |= {
        "target": f"p50 <= {TARGET_P50_S * 1e3:g} ms, p99 <= {TARGET_P99_S * 1e3:g} ms",
        "how": f"{calls} sequential REST calls after {_WARM_CALLS} untimed ones, each server "
        "in a subprocess (process backend), timed once the server and its workers are idle; "
        "the figures: a keep-alive http.client connection sending a body encoded once (as a "
        "load generator does); `client`: kubeml's Client.infer; `httpx`: a plain httpx "
        "client, the body encoded per call; interleaved",
        "settled_s": settled_s,
        "client": _figures(latencies["this tree", "client"], calls, samples),
        "httpx": _figures(latencies["this tree", "httpx"], calls, samples),
    }
    if baseline:
        base = _figures(latencies["baseline", "raw"], calls, samples)
        result |= {
            "baseline": {**base, "source": str(baseline)},
            "p50_vs_baseline": result["p50_s"] / base["p50_s"],
            "p99_vs_baseline": result["p99_s"] / base["p99_s"],
        }
    return result


def _figures_line(figures: dict[str, Any]) -> str:
    return (
        f"p50 {figures['p50_s'] * 1e3:.2f} ms (ratio {figures['p50_ratio']:.2f}), "
        f"p99 {figures['p99_s'] * 1e3:.2f} ms (ratio {figures['p99_ratio']:.2f}), "
        f"max {figures['max_s'] * 1e3:.1f} ms, first call {figures['first_call_s'] * 1e3:.0f} ms"
    )


def serve_line(result: dict[str, Any]) -> str:
    client, httpx = result["client"], result["httpx"]
    line = (
        f"serving ({result['samples_per_call']} samples, {result['calls']} warm REST calls): "
        f"{_figures_line(result)} (target {result['target']}); through kubeml's Client.infer: "
        f"p50 {client['p50_s'] * 1e3:.2f} ms, p99 {client['p99_s'] * 1e3:.2f} ms; through "
        f"plain httpx: p50 {httpx['p50_s'] * 1e3:.2f} ms, p99 {httpx['p99_s'] * 1e3:.2f} ms"
    )
    if "baseline" in result:
        line += (
            f"; interleaved with {result['baseline']['source']}: "
            f"{_figures_line(result['baseline'])}; this/baseline p50 "
            f"{result['p50_vs_baseline']:.2f}, p99 {result['p99_vs_baseline']:.2f}"
        )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument(
        "--baseline", type=Path, help="another kubeml checkout to serve alongside, interleaved"
    )
    args = parser.parse_args()
    baseline = args.baseline.resolve() if args.baseline else None
    print(serve_line(serve_latency(calls=args.calls, samples=args.samples, baseline=baseline)))


if __name__ == "__main__":
    main()
