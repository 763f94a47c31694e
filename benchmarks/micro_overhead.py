"""Micro-benchmark (d): framework overhead, kubeml N=1 K=-1 vs a plain loop, interleaved.

The workload table's overhead figure comes from two rows minutes apart; on a shared
machine, load drifts in between. Here the two alternate epoch by epoch: one plain epoch
in this process (2 threads) and one 1-epoch kubeml task on warm workers (N=1, so 2
threads), in ABBA order, repeated. Both train the same LeNet on the same data
with the same batches' maths; the ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from benchmarks.records import Workload
from benchmarks.reference import Split, build_model, epoch_order, make_optimizer, now, train_steps
from benchmarks.rows_kubeml import deploy_reference, fresh_engine, prewarm, run_task, train_request


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


def framework_overhead(workload: Workload, quick: bool) -> dict[str, Any]:
    reps = 2 if quick else 6
    one_epoch = replace(workload, goal_accuracy=100.0, epochs=1)
    pairs: list[tuple[float, float]] = []  # (plain, kubeml) samples/s, run back to back
    with fresh_engine() as engine:
        deploy_reference(engine, workload.data_dir)
        prewarm(engine, workload, 1)
        for rep in range(reps):
            if rep % 2 == 0:  # ABBA order, so a drift in load falls on both sides
                plain = _plain_epochs(workload, 1)[0]
            _, _, logs = run_task(engine, train_request(one_epoch, 1, -1, validate_every=0))
            if rep % 2 == 1:
                plain = _plain_epochs(workload, 1)[0]
            pairs.append((plain, logs[0].samples_per_s))
    return {
        "ratio": statistics.median(k / p for p, k in pairs),
        "pooled_ratio": statistics.median(k for _, k in pairs)
        / statistics.median(p for p, _ in pairs),
        "target": ">= 0.98",  # ARCHITECTURE section 6
        "pairs_samples_per_s": pairs,
        "how": f"{reps} pairs (one plain epoch, one 1-epoch kubeml task) in ABBA order; "
        "median of the per-pair ratios (robust to load that drifts between pairs)",
    }
