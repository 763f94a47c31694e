"""Chaos run: train while a helper SIGKILLs a random worker every few seconds, and the
server once; the task must finish and nothing stored may be lost.

    python -m benchmarks.chaos [--epochs 6] [--every 3] [--out FILE.json]

A real server process (process backend, 2 slots) on a fresh home trains the digits MLP
of tests/functions (sklearn's real 8x8 digits). Before the chaos a first task trains to
the end: its history, model and predictions must be the same afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference import free_port
from kubeml.api.schemas import TaskState
from kubeml.procs import children


def _digits(folder: Path) -> list[Path]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.images.astype(np.uint8), data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    arrays = {"train_x": x[300:], "train_y": y[300:], "test_x": x[:300], "test_y": y[:300]}
    paths = []
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
        paths.append(folder / f"{name}.npy")
    return paths


def run(epochs: int, every_s: float, server_kill_after_s: float, sleep_s: float) -> dict[str, Any]:
    from kubeml.client import Client, ensure_server, server_status, stop_server
    from kubeml.settings import Settings
    from tests.conftest import function_source

    tmp = Path(tempfile.mkdtemp(prefix="kubeml-chaos-"))
    settings = Settings(
        home=tmp / "home", host="127.0.0.1", port=free_port(), backend="process",
        capacity=2, shm_dir=tmp / "shm", api_token=None, url=None,
    )  # fmt: skip
    kills: dict[str, Any] = {"workers": 0, "server": 0}
    try:
        client = Client(ensure_server(settings, quiet=True), token="")
        client.create_function("mlp", function_source(SLEEP_PER_BATCH_S=sleep_s))
        client.create_dataset("digits", *_digits(tmp))
        task = dict(function="mlp", dataset="digits", batch_size=16, k=4, lr=0.05, static=True)
        first = client.train(**task, epochs=2)
        assert client.wait(first, timeout_s=300, poll_s=0.2).state is TaskState.SUCCEEDED
        samples = np.load(tmp / "test_x.npy")[:20].tolist()
        before = (client.get_history(first), client.infer(first, samples))

        task_id = client.train(**task, epochs=epochs, checkpoint_every_s=1.0, max_retries=1000)
        done = threading.Event()
        started = time.monotonic()

        def chaos() -> None:
            server_killed = False
            while not done.wait(every_s * random.uniform(0.5, 1.5)):
                status = server_status(settings)
                if status is None:
                    continue
                server = int(status["pid"])
                if not server_killed and time.monotonic() - started > server_kill_after_s:
                    os.kill(server, signal.SIGKILL)
                    kills["server"] += 1
                    server_killed = True
                    continue
                workers = children(server)
                if workers:
                    os.kill(random.choice(workers), signal.SIGKILL)
                    kills["workers"] += 1

        helper = threading.Thread(target=chaos, daemon=True)
        helper.start()
        deadline = time.monotonic() + 1200
        info = None
        while time.monotonic() < deadline:
            try:  # the server may be down: bring it back as a user would
                client = Client(ensure_server(settings, quiet=True), token="")
                info = client.get_task(task_id)
                if info.state.finished:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        done.set()
        helper.join()
        assert info is not None
        client = Client(ensure_server(settings, quiet=True), token="")
        info = client.get_task(task_id)
        history = client.get_history(task_id)
        after = (client.get_history(first), client.infer(first, samples))
        return {
            "state": info.state.value,
            "epochs": [e.epoch for e in history.epochs],
            "accuracy": info.accuracy,
            "failures": info.failures,
            "retries": info.retries,
            "kills": kills,
            "wall_s": time.monotonic() - started,
            "first_task_intact": before == after,
            "functions": [f.name for f in client.list_functions()],
            "datasets": [d.name for d in client.list_datasets()],
        }
    finally:
        stop_server(settings, timeout_s=30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--server-kill-after", type=float, default=10.0)
    parser.add_argument("--sleep", type=float, default=0.03, help="per batch: paces the run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.epochs, args.every, args.server_kill_after, args.sleep)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    ok = (
        result["state"] == "succeeded"
        and result["epochs"] == list(range(1, args.epochs + 1))
        and result["first_task_intact"]
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
