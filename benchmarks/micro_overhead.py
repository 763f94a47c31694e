"""Micro-benchmark (d): framework overhead, kubeml N=1 K=-1 vs a plain loop, interleaved.

The workload table's overhead figure comes from two rows minutes apart; on a shared
machine, load drifts in between. Here the two alternate epoch by epoch: one plain epoch
in this process (2 threads) and one 1-epoch kubeml task on warm workers (N=1, so 2
threads), in ABBA order, repeated. Both train the same LeNet on the same data
with the same batches' maths; the ratio is the median of the per-pair ratios.

In the same run, the same 1-epoch task also reads its data from a home written before
chunks (four memory-mapped `.npy` files, as in `benchmarks/micro_chunks.py`), next to
the chunked one, in ABBA order: `chunks_vs_memory_map` is the median of the per-pair
ratios memory map samples/s ÷ chunks samples/s (issue 21 item 6: at most 1.03).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from benchmarks.records import Workload
from benchmarks.reference import Split, build_model, epoch_order, make_optimizer, now, train_steps
from benchmarks.rows_kubeml import (
    DATASET,
    deploy_reference,
    fresh_engine,
    prewarm,
    run_task,
    train_request,
    warm_up_task,
)

OLD_DATASET, OLD_FUNCTION = "fashion_npy", "lenet_npy"  # the same data, as .npy files


def _plain_epochs(workload: Workload, epochs: int) -> list[float]:
    """samples/s of `epochs` epochs of the plain loop, in this process."""
    import torch

    from benchmarks.data import Arrays

    saved = torch.get_num_threads()
    torch.set_num_threads(workload.threads)
    try:
        arrays = Arrays.load(workload.data_dir)
        train = Split(arrays.train_x, arrays.train_y)
        model = build_model(workload.seed)
        optimizer = make_optimizer(model, workload.lr)
        rates = []
        for epoch in range(epochs):
            order = epoch_order(len(train), workload.seed, epoch)
            t = now()
            samples, _ = train_steps(model, optimizer, train, order, workload.batch_size)
            rates.append(samples / (now() - t))
        return rates
    finally:
        torch.set_num_threads(saved)


def _deploy_old_format(engine: Any, workload: Workload) -> None:
    """The reference function again, reading the same samples from a dataset as kubeml
    wrote it before chunks (written into the engine's home, as an old home holds it)."""
    import numpy as np

    from benchmarks.data import FIELDS, Arrays
    from benchmarks.micro_chunks import old_home
    from benchmarks.reference import FUNCTION_FILE

    arrays = Arrays.load(workload.data_dir)
    fields = {f: np.asarray(getattr(arrays, f)) for f in FIELDS}  # the dtypes uploaded
    old_home(engine.home / "datasets", fields, OLD_DATASET)
    source = FUNCTION_FILE.read_text()
    marker = f'super().__init__("{DATASET}")'
    if marker not in source:
        raise RuntimeError(f"{FUNCTION_FILE.name} no longer names its dataset {DATASET!r}")
    engine.create_function(
        OLD_FUNCTION, source.replace(marker, f'super().__init__("{OLD_DATASET}")')
    )


def framework_overhead(workload: Workload, quick: bool) -> dict[str, Any]:
    reps = 2 if quick else 6
    one_epoch = replace(workload, goal_accuracy=100.0, epochs=1)
    request = train_request(one_epoch, 1, -1, validate_every=0)
    old_request = request | {"function": OLD_FUNCTION, "dataset": OLD_DATASET}
    pairs: list[tuple[float, float]] = []  # (plain, kubeml) samples/s, run back to back
    reads: list[tuple[float, float]] = []  # (memory map, chunks) samples/s
    with fresh_engine() as engine:
        deploy_reference(engine, workload.data_dir)
        _deploy_old_format(engine, workload)
        prewarm(engine, workload, 1)
        warm_up_task(engine, old_request | {"k": 1})
        for rep in range(reps):
            if rep % 2 == 0:  # ABBA order, so a drift in load falls on both sides
                plain = _plain_epochs(workload, 1)[0]
                old = run_task(engine, old_request)[2][0].samples_per_s
            chunked = run_task(engine, request)[2][0].samples_per_s
            if rep % 2 == 1:
                old = run_task(engine, old_request)[2][0].samples_per_s
                plain = _plain_epochs(workload, 1)[0]
            pairs.append((plain, chunked))
            reads.append((old, chunked))
    return {
        "ratio": statistics.median(k / p for p, k in pairs),
        "pooled_ratio": statistics.median(k for _, k in pairs)
        / statistics.median(p for p, _ in pairs),
        "target": ">= 0.98",  # ARCHITECTURE section 6
        "pairs_samples_per_s": pairs,
        "how": f"{reps} pairs (one plain epoch, one 1-epoch kubeml task) in ABBA order; "
        "median of the per-pair ratios (robust to load that drifts between pairs)",
        "chunks_vs_memory_map": {
            "ratio": statistics.median(m / c for m, c in reads),
            "target": "<= 1.03",  # issue 21 item 6: chunks at most 3% slower
            "pairs_samples_per_s": reads,
            "how": f"{reps} pairs of 1-epoch kubeml tasks, the data read from .npy memory "
            "maps and from chunks, in ABBA order; median of memory map ÷ chunks samples/s",
        },
    }
