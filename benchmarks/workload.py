"""The reference workload, every row in one run, and the ratios of ARCHITECTURE section 6."""

from __future__ import annotations

import os
import statistics
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from benchmarks.records import RowResult, Workload
from benchmarks.reference import now

RowRunner = Callable[[Workload], RowResult]


def _kubeml(parallelism: int, k: int, optimizer_state: str = "keep") -> RowRunner:
    def run(workload: Workload) -> RowResult:
        from benchmarks.rows_kubeml import run_kubeml

        return run_kubeml(workload, parallelism, k, optimizer_state)

    return run


def _plain(workload: Workload) -> RowResult:
    from benchmarks.rows_torch import run_plain

    return run_plain(workload)


def _ddp(k: int | None) -> RowRunner:
    def run(workload: Workload) -> RowResult:
        from benchmarks.rows_torch import run_ddp

        return run_ddp(workload, k)

    return run


def _ray(workload: Workload) -> RowResult:
    from benchmarks.rows_ray import run_ray

    return run_ray(workload)


# Run order alternates kubeml and baseline rows, so slow drifts in machine load (others
# share it) do not fall on one side only; the two rows of the overhead ratio run back to back.
ROWS: dict[str, RowRunner] = {
    "pytorch": _plain,
    "kubeml-n1-k-1": _kubeml(1, -1),
    "ddp": _ddp(None),
    "kubeml-n2-k-1": _kubeml(2, -1),
    "ddp-local-sgd-k8": _ddp(8),
    "kubeml-n2-k8": _kubeml(2, 8),
    "kubeml-n2-k32": _kubeml(2, 32),
    "ray": _ray,
    "kubeml-n2-k8-reset": _kubeml(2, 8, "reset"),
}


def run_rows(
    workload: Workload, keys: Sequence[str], echo: Callable[[str], None], repeat: int = 1
) -> list[RowResult]:
    """Run the rows `repeat` times (odd passes in reverse order, so a drift in machine load
    falls on both ends); a row that fails is reported as skipped, the rest still run."""
    results = []
    for rep in range(repeat):
        for key in keys if rep % 2 == 0 else list(reversed(keys)):
            echo(f"-- {key} (pass {rep + 1}/{repeat}) ...")
            started, load_before = now(), os.getloadavg()[0]
            try:
                row = ROWS[key](workload)
            except Exception as exc:
                echo(traceback.format_exc())
                row = RowResult(name=key, framework=key.split("-")[0], skipped=f"failed: {exc!r}")
            row = replace(
                row,
                key=key,
                goal_accuracy=workload.goal_accuracy,
                load_average=(load_before, os.getloadavg()[0]),
                repeat=rep,
            )
            results.append(row)
            echo(f"   {key}: {_one_line(row)} ({now() - started:.1f} s)")
    return results


def representatives(runs: Sequence[RowResult], keys: Sequence[str]) -> list[RowResult]:
    """Per row, the pass with the median time to the goal (the lower median for an even
    count; passes that missed the goal sort last)."""
    out = []
    for key in keys:
        passes = [r for r in runs if r.key == key]
        done = [r for r in passes if not r.skipped] or passes
        if done:
            done.sort(key=lambda r: r.time_to_goal_s if r.time_to_goal_s is not None else 1e18)
            out.append(done[(len(done) - 1) // 2])
    return out


def _one_line(row: RowResult) -> str:
    if row.skipped:
        return f"skipped: {row.skipped}"
    acc = ", ".join(f"{e.accuracy:.2f}" for e in row.epochs)
    return f"accuracy per epoch [{acc}], median {row.median_samples_per_s or 0:.0f} samples/s"


def _pooled_rate(runs: Sequence[RowResult], key: str) -> float | None:
    rates = [e.samples_per_s for r in runs if r.key == key and not r.skipped for e in r.epochs]
    return statistics.median(rates) if rates else None


def ratios_of(rows: Sequence[RowResult], runs: Sequence[RowResult] = ()) -> dict[str, Any]:
    """ARCHITECTURE section 6's figures that the workload rows give (`rows`: one per key;
    `runs`: every pass, pooled for the throughput ratio)."""
    by_key = {r.key: r for r in rows if not r.skipped}
    out: dict[str, Any] = {}
    kube, plain = _pooled_rate(runs or rows, "kubeml-n1-k-1"), _pooled_rate(runs or rows, "pytorch")
    if kube and plain:
        out["framework_overhead"] = {
            "value": kube / plain,
            "target": ">= 0.95",
            "how": "median epoch samples/s over every pass, kubeml N=1 K=-1 / plain loop, "
            "both 2 threads",
        }
    reached = sorted(
        (r for r in by_key.values() if r.time_to_goal_s is not None),
        key=lambda r: r.time_to_goal_s or 0.0,
    )
    out["time_to_goal_ranking"] = [
        {"key": r.key, "time_to_goal_s": r.time_to_goal_s, "wall_to_goal_s": r.wall_to_goal_s}
        for r in reached
    ]
    out["not_reaching_goal"] = [r.key for r in by_key.values() if r.time_to_goal_s is None]
    for label, attr in (("time_to_goal", "time_to_goal_s"), ("wall_to_goal", "wall_to_goal_s")):
        best_kube = _best([r for r in reached if r.framework == "kubeml"], attr)
        best_other = _best([r for r in reached if r.framework != "kubeml"], attr)
        if best_kube and best_other:
            kube_s, other_s = getattr(best_kube, attr), getattr(best_other, attr)
            out[f"{label}_best_kubeml_vs_best_other"] = {
                "kubeml": best_kube.key,
                "kubeml_s": kube_s,
                "other": best_other.key,
                "other_s": other_s,
                "ratio": kube_s / other_s,
                "kubeml_fastest": kube_s <= other_s,
                "target": "kubeml's best row is the fastest (ratio <= 1)",
            }
    keep, reset = by_key.get("kubeml-n2-k8"), by_key.get("kubeml-n2-k8-reset")
    if keep and reset:
        out["optimizer_state_n2_k8"] = {
            state: {
                "time_to_goal_s": r.time_to_goal_s,
                "goal_epoch": r.goal_epoch.epoch if r.goal_epoch else None,
                "accuracy_per_epoch": [e.accuracy for e in r.epochs],
            }
            for state, r in (("keep", keep), ("reset", reset))
        }
    return out


def _best(rows: Sequence[RowResult], attr: str) -> RowResult | None:
    return min(rows, key=lambda r: getattr(r, attr), default=None)
