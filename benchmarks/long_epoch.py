"""A long epoch on the process backend: does a round late in the epoch cost what an early
one does?

    python -m benchmarks.long_epoch [--samples 96000] [--batch 8] [--runs 2]

An in-process engine (process backend, N=2, K=1) trains a tiny MLP
(`benchmarks/functions/mlp_wide_fashion.py` at width 16) for one epoch of `--samples`
random 28x28 images, `samples / (2 * batch)` rounds (6,000 by default): rounds so small
that the control plane's own work per round shows. From the task's round points (the
last 5,000 are kept), the median round over rounds 100-300 of those kept and over the
last 200. Printed per run: both, and late ÷ early (about 1 when a round's cost does not
grow with the rounds already merged in the epoch).
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import numpy as np

from benchmarks.cluster_growth import function_source
from benchmarks.rows_kubeml import fresh_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=96_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.samples, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, args.samples).astype(np.int64)
    with fresh_engine("process", 2) as engine:
        engine.create_function("tiny", function_source(16))
        engine.create_dataset("fashion", x, y, x[:256], y[:256])
        for run in range(args.runs):
            task_id = engine.train(
                function="tiny", dataset="fashion", epochs=1, parallelism=2, k=1,
                batch_size=args.batch, lr=0.01, static=True, validate_every=0, seed=run,
            )  # fmt: skip
            info = engine.wait(task_id, timeout_s=1800)
            if info.error:
                raise SystemExit(f"task {task_id} {info.state.value}: {info.error}")
            elapsed = [p.elapsed_s for p in engine.progress.rounds(task_id)]
            rounds = [b - a for a, b in itertools.pairwise(elapsed)]
            early = statistics.median(rounds[100:300])
            late = statistics.median(rounds[-200:])
            print(
                f"run {run}: {len(rounds) + 1} rounds kept; a round early {early * 1e3:.2f} ms, "
                f"late {late * 1e3:.2f} ms; late ÷ early {late / early:.2f}"
            )


if __name__ == "__main__":
    main()
