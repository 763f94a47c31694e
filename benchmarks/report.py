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
from typing import Any

from benchmarks.records import RowResult, Workload


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def workload_table(rows: Sequence[RowResult], goal: float) -> str:
    head = (
        f"{'row':<26} {'N':>2} {'K':>4} {'start-up s':>10} {f'to {goal:g}% s':>9} "
        f"{'wall to goal s':>14} {'epochs':>6} {'med samples/s':>13} {'final acc %':>11} "
        f"{'load':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.skipped:
            lines.append(f"{r.name:<26} skipped: {r.skipped}")
            continue
        k = "-" if r.k is None else str(r.k)
        lines.append(
            f"{r.name:<26} {r.parallelism:>2} {k:>4} {r.startup_s:>10.1f} "
            f"{_fmt(r.time_to_goal_s):>9} {_fmt(r.wall_to_goal_s):>14} {len(r.epochs):>6} "
            f"{_fmt(r.median_samples_per_s, '.0f'):>13} {_fmt(r.final_accuracy, '.2f'):>11} "
            f"{r.load_average[0]:>4.1f}>{r.load_average[1]:<4.1f}"
        )
    lines.append("(load: the machine's 1-minute load average at the row's start > end; 2 cores)")
    return "\n".join(lines)


def ratio_lines(ratios: dict[str, Any]) -> str:
    lines = []
    overhead = ratios.get("framework_overhead")
    if overhead:
        lines.append(
            f"framework overhead: {overhead['value']:.3f} (target {overhead['target']}; "
            f"{overhead['how']})"
        )
    for label in ("time_to_goal", "wall_to_goal"):
        cmp = ratios.get(f"{label}_best_kubeml_vs_best_other")
        if cmp:
            verdict = "kubeml is fastest" if cmp["kubeml_fastest"] else "kubeml is NOT fastest"
            lines.append(
                f"{label.replace('_', ' ')}: best kubeml {cmp['kubeml']} {cmp['kubeml_s']:.1f} s "
                f"vs "
                f"best other {cmp['other']} {cmp['other_s']:.1f} s -> ratio {cmp['ratio']:.2f} "
                f"({verdict})"
            )
    ranking = ratios.get("time_to_goal_ranking")
    if ranking:
        order = ", ".join(
            f"{i + 1}. {r['key']} {r['time_to_goal_s']:.1f}s" for i, r in enumerate(ranking)
        )
        lines.append(f"ranking by time to goal: {order}")
    if ratios.get("not_reaching_goal"):
        lines.append(f"did not reach the goal: {', '.join(ratios['not_reaching_goal'])}")
    opt = ratios.get("optimizer_state_n2_k8")
    if opt:
        parts = [
            f"{state}: {_fmt(v['time_to_goal_s'])} s (goal at epoch {v['goal_epoch']})"
            for state, v in opt.items()
        ]
        lines.append(f"optimizer_state at N=2 K=8, time to goal: {'; '.join(parts)}")
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


def write_json(
    path: Path,
    workload: Workload | None,
    rows: Sequence[RowResult],
    runs: Sequence[RowResult],
    ratios: dict[str, Any],
    micro: dict[str, Any] | None,
    quick: bool,
) -> None:
    doc: dict[str, Any] = {
        "written_at": datetime.now(timezone.utc).isoformat(),
        "quick": quick,
        "machine": machine(),
        "workload": {**asdict(workload), "data_dir": str(workload.data_dir)} if workload else None,
        "rows": [r.summary() for r in rows],
        "all_passes": [r.summary() for r in runs],
        "ratios": ratios,
        "micro": micro,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))
