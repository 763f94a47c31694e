"""Does a compressed sync train as well as fp32? Test accuracy at every epoch, per precision.

    python -m benchmarks.precision [--workloads mnist5k fashion] [--seeds 0 1 2]
        [--precisions fp32 bf16 int8] [--epochs 4] [--out FILE.json]

On a local Ray cluster (`ray.cluster_utils.Cluster`: a head with no CPUs, two 1-CPU worker
nodes, so every task is sharded over two shard servers), each workload of the harness
(`benchmarks/specs.py`; `fashion` is its quick cut, 20,000/5,000) trains at N=2, K=8 with
every default, validating after every epoch, once per seed and precision. Printed: the
median over the seeds of the test accuracy at every epoch, per precision, and the largest
gap between a precision's median and fp32's at any epoch (issue "Past one machine": at
most 0.3 points).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference import ROOT

MB = 1024 * 1024
LIMIT = 0.3  # points


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from benchmarks.specs import prepare
    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 200 * MB},
    )
    results: dict[str, Any] = {}
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=200 * MB)
        ray.init(address=cluster.address, namespace="kubeml-precision")
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory(prefix="kubeml-bench-precision-") as tmp:
            settings = Settings(home=Path(tmp) / "home", backend="ray", round_timeout_s=600)
            with Engine(settings, backend=RayBackend.from_settings(settings)) as engine:
                for name in args.workloads:
                    work = prepare(name, Path(tmp) / name, quick=True)
                    source = (ROOT / work.function_file).read_text()
                    engine.create_function(work.function, source)
                    parts = ("train_x", "train_y", "test_x", "test_y")
                    engine.create_dataset(
                        work.dataset, *(np.load(work.data_dir / f"{p}.npy") for p in parts)
                    )
                    results[name] = {p: [] for p in args.precisions}
                    for seed in args.seeds:
                        for precision in args.precisions:
                            task_id = engine.train(
                                function=work.function, dataset=work.dataset,
                                epochs=args.epochs, lr=work.lr, parallelism=2, static=True,
                                validate_every=1, seed=seed, sync_precision=precision,
                            )  # fmt: skip
                            info = engine.wait(task_id, 3600)
                            if info.state.value != "succeeded":
                                raise RuntimeError(f"{name} {precision} seed {seed}: {info.error}")
                            epochs = engine.get_history(task_id).epochs
                            accuracy = [e.accuracy for e in epochs]
                            results[name][precision].append(accuracy)
                            print(json.dumps({"workload": name, "seed": seed,
                                              "precision": precision, "accuracy": accuracy}),
                                  flush=True)  # fmt: skip
                    engine.delete_dataset(work.dataset)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return results


def report(results: dict[str, Any], precisions: list[str]) -> tuple[str, float]:
    lines, worst = [], 0.0
    for name, by_precision in results.items():
        medians = {
            p: [statistics.median(epoch) for epoch in zip(*runs, strict=True)]
            for p, runs in by_precision.items()
        }
        lines.append(f"{name}: median test accuracy (%) over {len(by_precision['fp32'])} seeds")
        lines.append(
            "precision  " + "  ".join(f"ep{i + 1:>2d}" for i in range(len(medians["fp32"])))
        )
        for p in precisions:
            gaps = [abs(a - b) for a, b in zip(medians[p], medians["fp32"], strict=True)]
            worst = max([worst, *gaps]) if p != "fp32" else worst
            row = "  ".join(f"{a:5.2f}" for a in medians[p])
            lines.append(f"{p:9s}  {row}  largest gap to fp32 {max(gaps):.2f}")
    verdict = "yes" if worst <= LIMIT else "no"
    lines.append(f"largest gap of a compressed precision to fp32 at any epoch: {worst:.2f} "
                 f"points (target ≤ {LIMIT}: {verdict})")  # fmt: skip
    return "\n".join(lines), worst


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workloads", nargs="+", default=["mnist5k", "fashion"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.precisions[0] != "fp32":
        parser.error("the first precision must be fp32 (the others are compared with it)")
    results = run(args)
    text, worst = report(results, args.precisions)
    print("\n" + text)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"precision-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args) | {"out": str(out)}, "results": results, "worst_gap": worst}
    out.write_text(json.dumps(record | {"load_average": os.getloadavg()}, indent=1, default=str))
    print(f"load average {os.getloadavg()}; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
