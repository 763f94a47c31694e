"""The harness's JSON results as the Markdown tables of docs/performance.md.

    python -m benchmarks.markdown RESULTS.json [MORE.json ...]

One table per workload: every row, its median user time to the goal, training time,
epochs and samples/s, and each seed's user time and epochs; under it, kubeml's defaults
and its best row divided by the best peer (a row whose median missed the goal counts as
slower than any that arrived).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import fmt


def _seed(run: dict[str, Any]) -> str:
    if run.get("skipped"):
        return "x"
    if not run.get("goal_epoch"):
        return "miss"
    return f"{run['user_time_to_goal_s']:.1f} ({run['goal_epoch']})"


def _time(row: dict[str, Any]) -> float:
    value = row.get("median_user_time_to_goal_s")
    return math.inf if value is None else float(value)


def workload_markdown(name: str, entry: dict[str, Any]) -> str:
    workload = entry["workload"]
    rows = [r for r in entry["rows"] if not r.get("skipped")]
    seeds = [run["seed"] for run in rows[0]["per_seed"]] if rows else []
    head = (
        f"| row | to {workload['goal_accuracy']:g}% s | train s | epochs | samples/s | "
        + " | ".join(f"seed {s}: s (epochs)" for s in seeds)
        + " |"
    )
    lines = [head, "|" + " --- |" * (5 + len(seeds))]
    for row in rows:
        cells = [
            f"`{row['key']}`",
            fmt(row.get("median_user_time_to_goal_s")),
            fmt(row.get("median_time_to_goal_s")),
            fmt(row.get("median_goal_epoch"), "g"),
            fmt(row.get("median_samples_per_s"), ",.0f"),
            *(_seed(run) for run in row["per_seed"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    peers = [r for r in rows if r["framework"] != "kubeml"]
    kubeml = [r for r in rows if r["framework"] == "kubeml"]
    if peers and kubeml:
        peer = min(peers, key=_time)
        best = min(kubeml, key=_time)
        defaults = next((r for r in kubeml if r["key"] == "kubeml-defaults"), None)
        parts = []
        if defaults is not None:
            parts.append(f"kubeml-defaults ÷ {peer['key']}: **{_ratio(defaults, peer)}**")
        parts.append(f"best kubeml ({best['key']}) ÷ {peer['key']}: {_ratio(best, peer)}")
        lines.append("")
        lines.append(f"`{name}`: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _ratio(row: dict[str, Any], peer: dict[str, Any]) -> str:
    a, b = _time(row), _time(peer)
    if math.isinf(a):
        return "missed the goal"
    return "-" if math.isinf(b) else f"{a / b:.2f}"


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for name, entry in doc["workloads"].items():
            print(f"#### `{name}`\n")
            print(workload_markdown(name, entry))
            print()


if __name__ == "__main__":
    main(sys.argv[1:])
