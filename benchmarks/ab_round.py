"""A K-AVG round of this tree against another checkout, interleaved in one run.

    python -m benchmarks.ab_round --baseline DIR [--pairs 5] [--quick]

Each measurement is a fresh process whose `kubeml` comes from one tree (its `src` first on
PYTHONPATH; the process backend's workers inherit it), in ABBA order, so a drift in the
machine's load falls on both. It trains, at N=2 on the process backend with the default
settings, (a) LeNet-5 with SGD momentum at the default K=8 on random 28x28 images, and
(b) the ResNet-18-sized model (11.7M parameters) with SGD momentum and K=1, whose train
step only steps the optimizer: the worst case for what a round carries besides weights
(each function keeps its 47 MB of momentum between rounds). A figure is the median
interval between the task's merged rounds; the result is this tree / the baseline, the
median over the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROBE_FILE = ROOT / "benchmarks" / "functions" / "state_probe.py"
CASES = {  # name: (probe's MODEL, K, batches per function)
    "lenet K=8": ("lenet", 8, 96),
    "resnet18 K=1": ("resnet18", 1, 12),
}


def measure(quick: bool) -> dict[str, float]:
    """In this process's `kubeml`: the median round interval of each case, in seconds."""
    import numpy as np

    from kubeml import Engine
    from kubeml.api.schemas import TaskState
    from kubeml.settings import Settings

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubeml-ab-") as tmp:
        settings = Settings(home=Path(tmp) / "home", shm_dir=Path(tmp) / "shm", capacity=2)
        with Engine(settings) as engine:
            for name, (model, k, batches) in CASES.items():
                if quick:
                    batches //= 2
                source = PROBE_FILE.read_text().replace('MODEL = "lenet"', f'MODEL = "{model}"')
                engine.create_function(model, source)
                shape = (1, 28, 28) if model == "lenet" else (3, 32, 32)
                x = np.random.default_rng(0).random((2 * batches * 64, *shape), dtype=np.float32)
                y = np.zeros(len(x), dtype=np.int64)
                engine.create_dataset(model, x, y, x[:2], y[:2])
                request = dict(
                    function=model, dataset=model, epochs=2, batch_size=64, parallelism=2,
                    k=k, static=True, validate_every=0,
                )  # fmt: skip
                engine.wait(engine.train(**request), 600)  # warm the workers and files
                task_id = engine.train(**request)
                info = engine.wait(task_id, 600)
                assert info.state is TaskState.SUCCEEDED, info.error
                points = engine.progress.rounds(task_id)
                gaps = [b.elapsed_s - a.elapsed_s for a, b in pairwise(points) if b.epoch == a.epoch]
                out[name] = statistics.median(gaps)
    return out


def _run(tree: Path, quick: bool) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{ROOT}")
    argv = [sys.executable, "-m", "benchmarks.ab_round", "--measure"] + (["--quick"] * quick)
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_round", description=__doc__)
    parser.add_argument("--baseline", type=Path, help="another kubeml checkout")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="half the rounds")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.quick)))
        return 0
    if args.baseline is None:
        parser.error("--baseline DIR is required")
    trees = {"this": ROOT, "baseline": args.baseline.resolve()}
    runs: dict[str, list[dict[str, float]]] = {"this": [], "baseline": []}
    for pair in range(args.pairs):
        order = ["this", "baseline"] if pair % 2 == 0 else ["baseline", "this"]
        for side in order:
            runs[side].append(_run(trees[side], args.quick))
        print(f"pair {pair + 1}: this {runs['this'][-1]}, baseline {runs['baseline'][-1]}")
    result: dict[str, Any] = {"baseline": str(trees["baseline"]), "pairs": args.pairs}
    for name in CASES:
        ratios = [a[name] / b[name] for a, b in zip(runs["this"], runs["baseline"], strict=True)]
        result[name] = {
            "this_s": statistics.median(r[name] for r in runs["this"]),
            "baseline_s": statistics.median(r[name] for r in runs["baseline"]),
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
        }
        print(
            f"{name}: round {result[name]['this_s'] * 1e3:.1f} ms here, "
            f"{result[name]['baseline_s'] * 1e3:.1f} ms in the baseline; this/baseline "
            f"median {result[name]['ratio_median']:.3f} over {args.pairs} pairs "
            f"({', '.join(f'{r:.3f}' for r in ratios)})"
        )
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
