"""Two tasks at once on one machine: what each trains while they share the cores.

    python -m benchmarks.two_tasks [--train 12000] [--epochs 2]

Two static 1-function tasks (the reference LeNet on a cut of Fashion-MNIST, K=8) are
submitted together to one engine (process backend, 2 slots), after a warm-up task that
leaves warm workers. It prints each task's samples/s per epoch and the wall time for
both. Each function's torch threads are its share of the cores with the other task
counted (before session 16, each took every core, and the two thread pools fought).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/two_tasks.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.data import load_fashion_mnist  # noqa: E402 - needs ROOT on sys.path
from benchmarks.reference import FUNCTION_FILE  # noqa: E402
from benchmarks.rows_kubeml import fresh_engine  # noqa: E402


def two_tasks(train: int = 12_000, test: int = 1_000, epochs: int = 2) -> dict[str, Any]:
    arrays = load_fashion_mnist(train, test)
    request = dict(
        function="lenet", dataset="fashion", epochs=epochs, parallelism=1, static=True, k=8,
        lr=0.01, batch_size=64, validate_every=0,
    )  # fmt: skip
    with fresh_engine("process", capacity=2) as engine:
        engine.create_function("lenet", FUNCTION_FILE.read_text())
        engine.create_dataset(
            "fashion", arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y
        )
        engine.wait(engine.train(**{**request, "epochs": 1}), 900)  # warm workers
        started = time.perf_counter()
        ids = [engine.train(**request, seed=seed) for seed in (0, 1)]
        infos = [engine.wait(task_id, 1800) for task_id in ids]
        wall = time.perf_counter() - started
        failed = [(i.id, i.state.value, i.error) for i in infos if i.state.value != "succeeded"]
        if failed:
            raise RuntimeError(f"tasks did not succeed: {failed}")
        per_task = {
            task_id: [e.samples_per_s for e in engine.get_history(task_id).epochs]
            for task_id in ids
        }
    return {"samples_per_s": per_task, "wall_s": wall, "train_samples": train, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    result = two_tasks(args.train, epochs=args.epochs)
    print(json.dumps(result, indent=1))
    rates = [r for task in result["samples_per_s"].values() for r in task]
    print(
        f"two tasks at once: {min(rates):,.0f}-{max(rates):,.0f} samples/s per task and "
        f"epoch, {result['wall_s']:.1f} s wall for both"
    )


if __name__ == "__main__":
    main()
