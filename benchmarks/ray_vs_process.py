"""The reference workload on the ray backend vs the process backend, in one run.

    python -m benchmarks.ray_vs_process [--epochs 2] [--nodes 0] [--repeats 1] [--merge]
        [--bare-rounds]

LeNet-5 (`examples/lenet_fashion.py`) on Fashion-MNIST, N=2, K=8, batch 64, through the
real engine. Each backend gets a fresh engine, its two workers warmed by a throw-away task
(stopped after its first round), then one timed task; the figure is the training
throughput of its epochs (samples/s from the task history: training only, no
validation). The ray backend runs on a local Ray started for the run (`--nodes 0`: one
node, like `kubeml server start --backend ray` without an address) or on a local
`ray.cluster_utils.Cluster` of `--nodes` 1-CPU worker nodes, where the functions run on
different nodes and every weight and shard crosses the object store between nodes.
With `--repeats` > 1 the backends alternate (ABBA) and the median of the per-pair ratios
is printed too: on a shared machine, load drifts between runs.

`--bare-rounds` times a round with next to no compute (the tests' digits MLP, K=1) on
both backends, alive side by side, tasks alternating: what the sync itself costs.

`--merge` also times where the merge should run (docs/cluster.md): one round's
parameter-server step for N=2 published LeNet-5 and ResNet-18-sized weight buffers, in
the control plane (what the backend does) vs in a Ray actor, on a 2-node cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/ray_vs_process.py` from anywhere
    sys.path.insert(0, str(ROOT))
FUNCTION_FILE = ROOT / "examples" / "lenet_fashion.py"
DIGITS_FUNCTION = ROOT / "tests" / "functions" / "digits_mlp.py"
EXAMPLES_DATA = ROOT / "examples" / "data.py"
MB = 1024 * 1024


def _examples_data() -> Any:
    """examples/data.py (benchmarks/ has a data.py of its own, so load it by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_kubeml_examples_data", EXAMPLES_DATA)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _request(epochs: int, seed: int = 0) -> dict[str, Any]:
    return dict(
        function="lenet",
        dataset="fashion",
        epochs=epochs,
        parallelism=2,
        k=8,
        lr=0.01,
        batch_size=64,
        static=True,
        seed=seed,
    )


def _run_backend(backend: str, arrays: dict[str, Any], epochs: int, nodes: int) -> dict[str, Any]:
    """One timed task on a fresh engine; returns its per-epoch figures and accuracy."""
    from kubeml.api.schemas import TaskState
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    home = Path(tempfile.mkdtemp(prefix=f"kubeml-bench-{backend}-"))
    settings = Settings(home=home, backend=backend, capacity=2, shm_dir=home / "shm")
    engine_backend = None
    if backend == "ray":
        from kubeml.backends.ray import RayBackend

        options = {"resources_per_function": {"kubeml": 1.0}} if nodes else {}
        engine_backend = RayBackend.from_settings(settings, **options)
    engine = Engine(settings, backend=engine_backend)
    try:
        engine.create_function("lenet", FUNCTION_FILE.read_text())
        engine.create_dataset(
            "fashion", *(arrays[k] for k in ("train_x", "train_y", "test_x", "test_y"))
        )
        from benchmarks.rows_kubeml import warm_up_task

        warm_up_task(engine, _request(1), timeout_s=600)  # both workers have trained
        task_id = engine.train(**_request(epochs))
        info = engine.wait(task_id, timeout_s=3600)
        if info.state is not TaskState.SUCCEEDED:
            raise SystemExit(f"{backend}: the task ended {info.state.value}: {info.error}")
        history = engine.get_history(task_id).epochs
        return {
            "samples_per_s": [e.samples_per_s for e in history],
            "epoch_s": [e.epoch_duration_s for e in history],
            "rounds": history[0].rounds,
            "accuracy": info.accuracy,
        }
    finally:
        engine.close()
        shutil.rmtree(home, ignore_errors=True)


def _start_ray(nodes: int) -> Any:
    """A local Ray for the run: `nodes` 1-CPU worker nodes (0: one plain local node), with
    the settings kubeml gives a Ray it starts itself (`LOCAL_RAY_CONFIG`)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from kubeml.backends.ray.cluster import LOCAL_RAY_CONFIG

    if not nodes:
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
            _system_config=LOCAL_RAY_CONFIG,
        )  # fmt: skip
        return None
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": 400 * MB,
            "_system_config": LOCAL_RAY_CONFIG,
        },
    )  # fmt: skip
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, resources={"kubeml": 1.0}, object_store_memory=400 * MB)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


def _stop_ray(cluster: Any) -> None:
    import ray

    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()


# -- the cost of one round's sync -------------------------------------------------------------
def _bare_rounds(repeats: int, nodes: int) -> dict[str, float]:
    """Median milliseconds per round with next to no compute (the tests' digits MLP, K=1,
    batch 32, N=2), on a process and a ray engine alive side by side, tasks alternating."""
    import numpy as np
    from sklearn.datasets import load_digits

    from kubeml.backends.ray import RayBackend
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    digits = load_digits()
    x = np.tile(digits.images.astype(np.uint8), (4, 1, 1))
    y = np.tile(digits.target.astype(np.int64), 4)
    engines, homes = {}, []
    try:
        for backend in ("process", "ray"):
            home = Path(tempfile.mkdtemp(prefix=f"kubeml-bench-rounds-{backend}-"))
            homes.append(home)
            settings = Settings(home=home, backend=backend, capacity=2, shm_dir=home / "shm")
            options = {"resources_per_function": {"kubeml": 1.0}} if nodes else {}
            engine_backend = (
                RayBackend.from_settings(settings, **options) if backend == "ray" else None
            )
            engine = engines[backend] = Engine(settings, backend=engine_backend)
            engine.create_function("mlp", DIGITS_FUNCTION.read_text())
            engine.create_dataset("digits", x[300:], y[300:], x[:300], y[:300])
        request = dict(
            function="mlp", dataset="digits", epochs=2, parallelism=2, k=1, batch_size=32,
            lr=0.05, static=True, validate_every=0,
        )  # fmt: skip
        per_round: dict[str, list[float]] = {b: [] for b in engines}
        for repeat in range(repeats + 1):  # the first pass warms both up
            order = list(engines) if repeat % 2 == 0 else list(engines)[::-1]
            for backend in order:
                task_id = engines[backend].train(**request)
                engines[backend].wait(task_id, timeout_s=600)
                if repeat:
                    per_round[backend] += [
                        e.epoch_duration_s / e.rounds
                        for e in engines[backend].get_history(task_id).epochs
                    ]
        return {b: statistics.median(v) for b, v in per_round.items()}
    finally:
        for engine in engines.values():
            engine.close()
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


# -- where the merge runs ---------------------------------------------------------------------
def _merge_placement(reps: int) -> list[tuple[str, float, float, float]]:
    """Median seconds of a round's synchronisation, merging in the control plane vs in an actor.

    Two publisher actors on the two worker nodes stand for the functions: each `ray.put`s a
    flat weight buffer and reports its ref to the driver (the control plane). Then, as the
    ray backend does, the driver fetches each buffer as its report arrives, averages them
    into the reference, `ray.put`s it and both publishers fetch it. In the actor variant
    the driver passes the refs to a merge actor on the first worker node, which fetches
    (one of them locally), averages, puts and returns the new ref, which both publishers
    fetch. Compute is the same in both; what differs is where the bytes go.
    """
    import numpy as np
    import ray
    import torch
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from kubeml.control.merge.average import weighted_average_into

    def average(buffers: list[np.ndarray], out: np.ndarray) -> None:
        with warnings.catch_warnings():  # ray.get gives read-only buffers; they are only read
            warnings.simplefilter("ignore", UserWarning)
            views = [{"w": torch.from_numpy(b.view(np.float32))} for b in buffers]
        weighted_average_into({"w": torch.from_numpy(out.view(np.float32))}, views, [1, 1])

    class Publisher:
        def publish(self, nbytes: int) -> list[Any]:
            return [ray.put(np.ones(nbytes, np.uint8))]

        def fetch(self, refs: list[Any]) -> int:
            return int(ray.get(refs[0]).nbytes)

    class Merger:
        def __init__(self, nbytes: int) -> None:
            self.reference = np.zeros(nbytes, np.uint8)

        def merge(self, refs: list[Any]) -> list[Any]:
            average(ray.get(refs), self.reference)
            return [ray.put(self.reference)]

    def on(node_id: str) -> dict[str, Any]:
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return {"num_cpus": 0, "scheduling_strategy": strategy}

    def control_plane_round(reference: np.ndarray) -> Any:
        reports, buffers = [p.publish.remote(nbytes) for p in publishers], []
        while reports:  # fetch each as its report arrives, as the backend's prefetch does
            done, reports = ray.wait(reports, num_returns=1)
            buffers.append(ray.get(ray.get(done[0])[0]))
        average(buffers, reference)
        return ray.put(reference)

    def actor_round(merger: Any) -> Any:
        refs = [r[0] for r in ray.get([p.publish.remote(nbytes) for p in publishers])]
        return ray.get(merger.merge.remote(refs))[0]

    workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "kubeml" in n["Resources"]]
    publishers = [ray.remote(Publisher).options(**on(node)).remote() for node in workers[:2]]
    rows = []
    for name, params in (("LeNet-5", 61_706), ("ResNet-18 size", 11_689_512)):
        nbytes = params * 4
        merger = ray.remote(Merger).options(**on(workers[0])).remote(nbytes)
        reference = np.zeros(nbytes, np.uint8)
        times: dict[str, list[float]] = {"control plane": [], "actor": []}
        for _ in range(reps + 1):  # the first pair warms both paths up
            for where in times:
                started = time.perf_counter()
                if where == "control plane":
                    new = control_plane_round(reference)
                else:
                    new = actor_round(merger)
                ray.get([p.fetch.remote([new]) for p in publishers])
                times[where].append(time.perf_counter() - started)
        cp, actor = (statistics.median(times[w][1:]) for w in ("control plane", "actor"))
        rows.append((name, nbytes / MB, cp, actor))
        ray.kill(merger)
    for publisher in publishers:
        ray.kill(publisher)
    return rows


def _print_backends(runs: dict[str, list[dict[str, Any]]], epochs: int) -> None:
    throughput = {}
    for backend, results in runs.items():
        per_epoch = [
            statistics.median(r["samples_per_s"][e] for r in results) for e in range(epochs)
        ]
        throughput[backend] = statistics.mean(per_epoch)
        accuracy = statistics.median(r["accuracy"] for r in results)
        figures = ", ".join(f"{s:.0f}" for s in per_epoch)
        print(
            f"  {backend:8s} samples/s per epoch: {figures}  accuracy {accuracy:.2f}%  "
            f"({results[0]['rounds']} rounds/epoch)"
        )
    print(f"epoch throughput ratio ray/process: {throughput['ray'] / throughput['process']:.3f}")
    if len(runs["ray"]) > 1:  # each pair ran back to back: robust to load that drifts between
        pairs = [
            statistics.mean(r["samples_per_s"]) / statistics.mean(p["samples_per_s"])
            for p, r in zip(runs["process"], runs["ray"], strict=True)
        ]
        figures = ", ".join(f"{r:.3f}" for r in pairs)
        print(f"per-pair ratios ray/process: {figures}; median {statistics.median(pairs):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="0: only the --merge timing")
    parser.add_argument("--nodes", type=int, default=0, help="worker nodes (0: one local node)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per backend, alternating")
    parser.add_argument("--train-size", type=int, default=None, help="cut the 60,000 samples")
    parser.add_argument("--merge", action="store_true", help="time the merge placement too")
    parser.add_argument(
        "--bare-rounds", action="store_true", help="time a round with next to no compute too"
    )
    args = parser.parse_args()
    if args.merge and args.nodes < 2:
        parser.error("--merge needs --nodes 2 or more")

    arrays = _examples_data().load_fashion_mnist()
    if args.train_size:
        arrays = {
            k: v[: args.train_size] if k.startswith("train") else v for k, v in arrays.items()
        }
    cluster = _start_ray(args.nodes)
    try:
        runs: dict[str, list[dict[str, Any]]] = {"process": [], "ray": []}
        for repeat in range(args.repeats if args.epochs else 0):
            order = ["process", "ray"] if repeat % 2 == 0 else ["ray", "process"]
            for backend in order:
                runs[backend].append(_run_backend(backend, arrays, args.epochs, args.nodes))
        merge_rows = _merge_placement(reps=15) if args.merge else []
        bare = _bare_rounds(args.repeats, args.nodes) if args.bare_rounds else {}
    finally:
        _stop_ray(cluster)

    where = f"{args.nodes} Ray worker nodes" if args.nodes else "one local Ray node"
    if args.epochs:
        print(
            f"LeNet-5 Fashion-MNIST, {len(arrays['train_x'])} samples, N=2, K=8, "
            f"{args.epochs} epoch(s), {args.repeats} run(s) each; ray on {where}"
        )
        _print_backends(runs, args.epochs)
    if bare:
        print(
            f"a bare round (digits MLP, K=1, batch 32, N=2; ray on {where}): process "
            f"{bare['process'] * 1e3:.1f} ms, ray {bare['ray'] * 1e3:.1f} ms; "
            f"ratio ray/process {bare['ray'] / bare['process']:.2f}"
        )
    if merge_rows:
        print(f"sync of one round on {where} (N=2 publish, merge, both fetch the reference):")
        for name, size_mb, cp, actor in merge_rows:
            print(
                f"  {name:15s} {size_mb:6.1f} MiB  merge in the control plane {cp * 1e3:7.2f} ms"
                f"  in an actor {actor * 1e3:7.2f} ms"
            )


if __name__ == "__main__":
    main()
