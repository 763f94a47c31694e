"""Printing the results as tables, and the JSON document a run writes."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.records import Workload

if TYPE_CHECKING:
    from benchmarks.workload import RowSummary


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def workload_table(rows: Sequence[RowSummary], workload: Workload) -> str:
    goal = workload.goal_accuracy
    head = (
        f"{'row':<58} {'N':>2} {'K':>4} {f'to {goal:g}% s':>9} {'train s':>7} {'epochs':>6} "
        f"{'samples/s':>9}  per seed (s)"
    )
    lines = [f"{workload.name} (medians over seeds)", head, "-" * len(head)]
    for r in rows:
        if r.skipped:
            lines.append(f"{r.name:<58} skipped: {r.skipped}")
            continue
        first = next(run for run in r.runs if not run.skipped)
        k = "-" if first.k is None else str(first.k)
        seeds = " ".join(
            "x" if run.skipped else fmt(run.user_time_to_goal_s) if run.goal_epoch else "miss"
            for run in r.runs
        )
        lines.append(
            f"{r.key[:58]:<58} {first.parallelism:>2} {k:>4} {fmt(r.user_time_s):>9} "
            f"{fmt(r.time_to_goal_s):>7} {fmt(r.goal_epochs, '.1f'):>6} "
            f"{fmt(r.samples_per_s, '.0f'):>9}  {seeds}"
        )
    lines.append(
        "(to goal: kubeml from the submit to a running server, peers from process start; "
        "train: from the start of training)"
    )
    return "\n".join(lines)


def ratio_lines(ratios: dict[str, Any]) -> str:
    lines = []
    for label in ("user_time_to_goal", "training_time"):
        cmp = ratios.get(f"{label}_best_kubeml_vs_best_peer")
        if cmp:
            lines.append(
                f"{label.replace('_', ' ')}: best kubeml {cmp['kubeml']} {cmp['kubeml_s']:.1f} s "
                f"/ best peer {cmp['peer']} {cmp['peer_s']:.1f} s = {cmp['ratio']:.2f} "
                f"(target {cmp['target']})"
            )
    ranking = ratios.get("time_to_goal_ranking")
    if ranking:
        order = ", ".join(
            f"{i + 1}. {r['key']} {r['median_user_time_to_goal_s']:.1f}s"
            for i, r in enumerate(ranking)
        )
        lines.append(f"ranking by median time to goal: {order}")
    if ratios.get("not_reaching_goal"):
        lines.append(f"median missed the goal: {', '.join(ratios['not_reaching_goal'])}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            line.split()[1]
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_end": os.getloadavg(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def write_json(path: Path, results: dict[str, dict[str, Any]], quick: bool) -> None:
    """Every workload's rows (medians), every run, the ratios and the micro-benchmarks."""
    doc: dict[str, Any] = {
        "written_at": datetime.now(timezone.utc).isoformat(),
        "quick": quick,
        "machine": machine(),
        "workloads": {},
    }
    for name, entry in results.items():
        workload = entry["workload"]
        doc["workloads"][name] = {
            "workload": {**asdict(workload), "data_dir": str(workload.data_dir)},
            "rows": [r.to_json() for r in entry.get("rows", [])],
            "all_runs": [r.summary() for r in entry.get("runs", [])],
            "ratios": entry.get("ratios", {}),
            "micro": entry.get("micro"),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))
