"""Micro-benchmark (a): one K-AVG round of an 11.7M-parameter model at N=2 vs memcpy.

Two measurements, both through kubeml's real code:

- end to end: the ResNet-18-sized probe function (its train step does nothing) runs the
  same batches once with K=1 (one round per batch) and once with K=-1 (one round), on the
  process backend. (epoch time K=1 - epoch time K=-1) / (rounds K=1 - rounds K=-1) is the
  cost of one round: publish, report over the pipe, merge, release, load. (On the local
  store the functions' tensors live in their published files, and the merge leaves the new
  model there: publishing and loading copy nothing, the merge writes N more copies.) With
  the default outer step (adaptive: two passes over the parameters) and with the plain
  average (one pass), which shows what the outer step's second pass costs.
- breakdown: the same phases called one after another in this process on the model
  store and merge functions, to see which one costs what.

Bytes a round must move (the lower bound): each of the N functions sends its P bytes of
weights to the parameter server and gets P merged bytes back, 2*N*P bytes copied; the
averaging can be fused into reading the inputs. The bound is those bytes at the memcpy
speed measured here (the fastest torch `copy_` of a 256 MiB buffer with the machine's
threads); sharing the functions' memory moves fewer bytes, but the bound is kept as
ARCHITECTURE defines it. A tiny-model probe (TINY=True: a few bytes of weights) runs
the same rounds, so its per-round time is the fixed latency of a round (pipe, barrier,
release), apart from the bytes.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.rows_kubeml import fresh_engine, run_task
from kubeml.control.plan.chunks import CHUNK_SIZE

PROBE_FILE = Path(__file__).parent / "functions" / "resnet18_probe.py"
PROBE_FUNCTION = "resnet18-probe"
TINY_FUNCTION = "tiny-probe"


def memcpy_bytes_per_s(threads: int, nbytes: int = 256 * 2**20, reps: int = 25) -> float:
    """Speed of torch `copy_` between two large, already-touched buffers: the fastest of
    `reps` copies (the machine's capability; a shared machine only ever slows it down)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(nbytes, dtype=torch.uint8)
        dst = torch.empty_like(src)
        dst.copy_(src)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
        return nbytes / min(times)
    finally:
        torch.set_num_threads(saved)


def _probe_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_resnet18_probe", PROBE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe_request(
    k: int, function: str = PROBE_FUNCTION, outer: str = "adaptive"
) -> dict[str, Any]:
    return {
        "outer_optimizer": outer,
        "function": function,
        "dataset": "probe",
        "epochs": 1,
        "batch_size": CHUNK_SIZE,
        "parallelism": 2,
        "k": k,
        "static": True,
        "validate_every": 0,
    }


def end_to_end_round_s(batches: int, reps: int) -> dict[str, Any]:
    """Seconds per round through the process backend, for the ResNet-18-sized probe and
    for the tiny one (the fixed latency of a round). `round_s`: the median interval
    between consecutive merged rounds of the K=1 tasks (the task's round points; each
    interval is a whole round plus one no-op batch), robust to the other work of a shared
    machine; `difference_s`: the median over `reps` K=1/K=-1 pairs of the epoch-time
    difference per extra round, which any disturbance during either task moves."""
    # name: (function, outer optimizer); the default outer step, KubeML 2021's plain
    # average (one pass, no momentum), and the tiny model's fixed latency
    variants = {
        "resnet18": (PROBE_FUNCTION, "adaptive"),
        "resnet18, average": (PROBE_FUNCTION, "average"),
        "tiny": (TINY_FUNCTION, "adaptive"),
    }
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    intervals: dict[str, list[float]] = {name: [] for name in variants}
    with fresh_engine() as engine:
        source = PROBE_FILE.read_text()
        engine.create_function(PROBE_FUNCTION, source)
        engine.create_function(TINY_FUNCTION, source.replace("TINY = False", "TINY = True", 1))
        # One batch per 64-sample chunk, so each of the 2 functions gets `batches` batches
        # (with fewer samples than two chunks, one function would train them all).
        x = np.zeros((2 * batches * CHUNK_SIZE, 1), dtype=np.float32)
        y = np.zeros(len(x), dtype=np.int64)
        engine.create_dataset("probe", x, y, x[:2], y[:2])
        run_task(engine, probe_request(1))  # warm the workers and the shm files
        for _ in range(reps):
            for name, (function, outer) in variants.items():
                _, task_id, many = run_task(engine, probe_request(1, function, outer))
                _, _, one = run_task(engine, probe_request(-1, function, outer))
                per_round[name].append((many[0].train_s - one[0].train_s) / (batches - 1))
                points = engine.progress.rounds(task_id)
                intervals[name] += [b.elapsed_s - a.elapsed_s for a, b in pairwise(points)]
    return {
        "round_s": {name: statistics.median(times) for name, times in intervals.items()},
        "difference_s": {name: statistics.median(times) for name, times in per_round.items()},
        "samples_s": per_round,
        "interval_quartiles_s": {
            name: statistics.quantiles(times, n=4) for name, times in intervals.items()
        },
        "rounds_per_task": batches,
    }


def breakdown_s(reps: int) -> dict[str, float]:
    """Median seconds of each phase of a round, run serially in this process, as the
    process backend runs them: the functions' tensors live in their published files
    (`share_into`), the merge runs on the control plane's workers (every core; the
    functions wait meanwhile) and leaves the new model in the published files. For
    comparison: the adaptive step on one lane, and publishing / loading by copy (tensors
    that cannot be shared: a GPU's, or the Ray backend's)."""
    import shutil
    import tempfile

    import torch

    from kubeml.control.merge.outer import OuterConfig, OuterOptimizer
    from kubeml.control.merge.workers import MergeWorkers
    from kubeml.stores.models import LocalModelStore

    probe = _probe_module()
    networks = [probe.ResNet18() for _ in range(2)]
    unshared = probe.ResNet18().state_dict()
    scratch = Path(tempfile.mkdtemp(prefix="kubeml-bench-shm-", dir="/dev/shm"))
    store = LocalModelStore(scratch, scratch / "models")
    task = "micro"
    saved = torch.get_num_threads()
    adaptive = OuterConfig("adaptive", 0.7, 0.9)
    steps = {  # name: (outer optimizer, workers: None for the control plane's)
        "merge (average)": (OuterConfig("average"), None),
        "merge + adaptive outer step": (adaptive, None),
        "merge + adaptive outer step, one worker thread": (adaptive, MergeWorkers(1)),
    }
    phases: dict[str, list[float]] = {
        "publish (one function)": [],
        "publish by copy (one function)": [],
        **{name: [] for name in steps},
        "load (one function)": [],
        "load the reference by copy (one function)": [],
    }

    def timed(phase: str, fn: Any, *args: Any) -> None:
        t = time.perf_counter()
        fn(*args)
        phases[phase].append(time.perf_counter() - t)

    try:
        store.write_reference(task, networks[0].state_dict())
        for func_id, network in enumerate(networks):
            store.share_into(task, func_id, network)
        states = [network.state_dict() for network in networks]
        optimizers = {
            name: OuterOptimizer(config, store.layout(task), workers)
            for name, (config, workers) in steps.items()
        }
        for _ in range(reps + 1):  # the first round touches fresh shared memory; dropped
            torch.set_num_threads(1)  # a function at N=2 on 2 cores has one thread
            timed("publish (one function)", store.publish, task, 0, states[0])
            store.publish(task, 1, states[1])
            timed("publish by copy (one function)", store.publish, task, 2, unshared)
            torch.set_num_threads(saved)  # the merge runs in a control-plane thread
            groups = [store.published_groups(task, i, None) for i in (0, 1)]
            for name, optimizer in optimizers.items():
                reference = store.reference_groups(task)
                timed(name, optimizer.step, reference, groups, [64, 64], groups)
            torch.set_num_threads(1)
            timed("load (one function)", store.load_published_into, task, 0, states[0])
            timed("load the reference by copy (one function)", store.load_reference_into,
                  task, unshared)  # fmt: skip
    finally:
        torch.set_num_threads(saved)
        store.clear_task(task)
        shutil.rmtree(scratch, ignore_errors=True)
    return {name: statistics.median(times[1:]) for name, times in phases.items()}


def sync_round(quick: bool) -> dict[str, Any]:
    from kubeml.stores.flat import FlatLayout

    probe = _probe_module()
    layout = FlatLayout.from_state(probe.ResNet18().state_dict())
    params = sum(p.numel() for p in probe.ResNet18().parameters())
    n = 2
    moved = 2 * n * layout.nbytes
    bandwidth = {threads: memcpy_bytes_per_s(threads) for threads in (1, 2)}
    bound_s = moved / bandwidth[2]
    e2e = end_to_end_round_s(batches=8 if quick else 24, reps=2 if quick else 3)
    parts = breakdown_s(reps=3 if quick else 5)
    return {
        "parameters": params,
        "state_bytes": layout.nbytes,
        "parallelism": n,
        "bytes_moved": moved,
        "bytes_counted_as": "2*N*P: N functions publish P bytes each, get P merged bytes back",
        "memcpy_bytes_per_s": {f"{t}_threads": b for t, b in bandwidth.items()},
        "memcpy_bound_s": bound_s,
        "round_s": e2e["round_s"]["resnet18"],
        "tiny_model_round_s": e2e["round_s"]["tiny"],
        "ratio": e2e["round_s"]["resnet18"] / bound_s,
        "ratio_average": e2e["round_s"]["resnet18, average"] / bound_s,
        "target": "<= 1.5",
        "end_to_end": e2e,
        "breakdown_serial_s": parts,
    }
