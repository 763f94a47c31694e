"""The figures of `python -m benchmarks.cluster`, from its rows' round marks: pure functions.

A run's marks are (epoch, round, time, every link's counters), taken when a round was
first seen done. A *whole round* lies between the marks of rounds r and r + 1 of one
epoch with r >= 1: the first round of an epoch holds the task's start or the previous
epoch's validation, checkpoint and final model, so per-round figures leave it out.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MB = 1e6
LINK_KEYS = ("tx_bytes", "rx_bytes", "drops")
# Rows whose sync moves both directions of a link at once (an all-reduce, a shard server
# that receives changes while it sends its own): their bandwidth model is the busier
# direction. The central merge receives every change, then sends the reference back.
SEQUENTIAL_ROWS = ("kubeml-central",)


def whole_rounds(marks: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping, Mapping]]:
    """Pairs of consecutive marks that bound exactly one whole round."""
    return [
        (a, b)
        for a, b in itertools.pairwise(marks)
        if a["round"] >= 1 and b["epoch"] == a["epoch"] and b["round"] == a["round"] + 1
    ]


def per_round(
    row: str, runs: Iterable[Mapping[str, Any]], rate_bytes_s: float | None
) -> dict[str, Any] | None:
    """Seconds, every link's bytes and the bandwidth model per whole round, over `runs`."""
    pairs = [pair for run in runs for pair in whole_rounds(run.get("marks", []))]
    if not pairs or not pairs[0][0].get("links"):
        return None
    rounds, seconds = len(pairs), sum(b["t"] - a["t"] for a, b in pairs)
    links = {
        node: {
            key: sum(b["links"][node][key] - a["links"][node][key] for a, b in pairs) / rounds
            for key in LINK_KEYS
        }
        for node in pairs[0][1]["links"]
    }
    busiest = max(links, key=lambda n: links[n]["tx_bytes"] + links[n]["rx_bytes"])
    both = links[busiest]["tx_bytes"] + links[busiest]["rx_bytes"]
    one_way = max(max(v["tx_bytes"], v["rx_bytes"]) for v in links.values())
    summary: dict[str, Any] = {
        "row": row,
        "rounds": rounds,
        "round_s": seconds / rounds,
        "links_per_round": links,
        "busiest_link": busiest,
        "busiest_bytes_per_round": both,
        "model_s": both / rate_bytes_s if rate_bytes_s else None,
        "model_one_way_s": one_way / rate_bytes_s if rate_bytes_s else None,
    }
    summary["bandwidth_model_s"] = summary[
        "model_s" if row in SEQUENTIAL_ROWS else "model_one_way_s"
    ]
    if "cp" in links:
        summary["cp_bytes_each_round"] = [
            sum(b["links"]["cp"][k] - a["links"]["cp"][k] for k in ("tx_bytes", "rx_bytes"))
            for a, b in pairs
        ]
    syncs = [b["sync_s"] for _, b in pairs if "sync_s" in b]
    if syncs:
        summary["sync_s"] = statistics.median(syncs)
    return summary


def time_to_goal(runs: Iterable[Mapping[str, Any]], cap_s: float) -> dict[str, Any]:
    """The median over seeds of the seconds to the goal; a run that did not arrive within
    `cap_s` (capped, out of epochs, failed, or arrived at an epoch's end past the cap: the
    peers look at the clock once an epoch) counts as slower than any that did (infinite)."""
    times = [
        run["goal_s"] if run.get("goal_s") is not None and run["goal_s"] <= cap_s else math.inf
        for run in runs
    ]
    return {
        "goal_s": times,
        "median_goal_s": statistics.median(times) if times else math.inf,
        "arrived": sum(math.isfinite(t) for t in times),
    }


# The sync as a function times it: reading the round's model (a compressed update, at a
# round's start), sending its change, waiting for the merge, and where rounds overlap, the
# part of the sync its next round's steps hid.
SYNC_PHASES = ("load", "send", "wait", "overlapped")


def phase_syncs(runs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each kubeml row's mean seconds of a round's sync as its functions time them, from
    the task log's line per epoch (`a function's round, mean over R: load X s, ...`):
    every round counts, an epoch's first and last among them."""
    seconds: dict[str, float] = {}
    rounds: dict[str, int] = {}
    for run in runs:
        for line in run.get("round_phases", []):
            count = re.search(r"mean over (\d+)", line)
            phases = dict(re.findall(r"(\w+) ([\d.]+) s", line))
            if count is None or not phases:
                continue
            n = int(count.group(1))
            sync = sum(float(phases.get(name, 0.0)) for name in SYNC_PHASES)
            seconds[run["row"]] = seconds.get(run["row"], 0.0) + sync * n
            rounds[run["row"]] = rounds.get(run["row"], 0) + n
    return {row: seconds[row] / rounds[row] for row in seconds if rounds[row]}


def estimate_syncs(summaries: dict[str, dict[str, Any]]) -> float | None:
    """Rows that cannot time their own sync get round - compute, the compute of a round
    being the least of the rows that time theirs (DDP local SGD, Ray Train: the same K
    steps, batch and one-CPU nodes; round less sync). The least, because other work on
    the machine inflates compute: the estimated sync is then an upper bound. Returns that
    compute (None without such a row)."""
    computes = [s["round_s"] - s["sync_s"] for s in summaries.values() if "sync_s" in s]
    if not computes:
        return None
    compute_s = max(0.0, min(computes))
    for summary in summaries.values():
        if "sync_s" not in summary:
            summary["sync_s"] = max(0.0, summary["round_s"] - compute_s)
            summary["sync_estimated"] = True
    return compute_s


def outside_checkpoints(each_round: Sequence[float], p_bytes: int) -> tuple[float | None, int]:
    """The control plane link's mean bytes per round ÷ P over the whole rounds that carried
    no checkpoint, and how many did. A sharded round moves kilobytes there and a
    checkpoint's gather at least P, so a round with more than P/2 carried one. (None: every
    round did, as every round of the central merge moves 2·N·P.)"""
    quiet = [b for b in each_round if b <= p_bytes / 2]
    mean = sum(quiet) / len(quiet) / p_bytes if quiet else None
    return mean, len(each_round) - len(quiet)


def _f(value: float | None, width: int = 7, digits: int = 2) -> str:
    if value is None:
        return f"{'-':>{width}s}"
    if math.isinf(value):
        return f"{'>cap':>{width}s}"
    return f"{value:{width}.{digits}f}"


def ratios(
    summaries: Mapping[str, Mapping[str, Any]], goals: Mapping[str, Mapping[str, Any]], p_bytes: int
) -> dict[str, Any]:
    """The issue's targets: kubeml's best time to goal ÷ the best peer's (≤ 0.33 at 100mbit),
    the control plane link's bytes per round ÷ P (< 1% sharded), sharded sync ÷ its model
    (≤ 1.5)."""

    def best(prefix: bool) -> tuple[str | None, float]:
        rows = [r for r in goals if r.startswith("kubeml") == prefix]
        if not rows:
            return None, math.nan
        row = min(rows, key=lambda r: goals[r]["median_goal_s"])
        return row, goals[row]["median_goal_s"]

    (kubeml_row, kubeml_s), (peer_row, peer_s) = best(True), best(False)
    out: dict[str, Any] = {"best_kubeml": kubeml_row, "best_peer": peer_row}
    if kubeml_row and peer_row and math.isfinite(peer_s):
        out["goal_ratio"] = kubeml_s / peer_s
    out["cp_bytes_over_p"] = {
        row: (s["links_per_round"]["cp"]["tx_bytes"] + s["links_per_round"]["cp"]["rx_bytes"])
        / p_bytes
        for row, s in summaries.items()
        if row.startswith("kubeml") and "cp" in s["links_per_round"]
    }
    out["cp_outside_checkpoints"] = {
        row: outside_checkpoints(s["cp_bytes_each_round"], p_bytes)
        for row, s in summaries.items()
        if row.startswith("kubeml") and "cp_bytes_each_round" in s
    }
    out["sync_over_model"] = {
        row: s["sync_s"] / s["bandwidth_model_s"]
        for row, s in summaries.items()
        if s.get("sync_s") is not None and s.get("bandwidth_model_s")
    }
    return out


def report(
    profile: str,
    summaries: Mapping[str, Mapping[str, Any]],
    goals: Mapping[str, Mapping[str, Any]],
    p_bytes: int,
    setting: str,
) -> str:
    """The table of one profile and its ratios, as text."""
    lines = [
        f"{profile} links, {setting}, P = {p_bytes / MB:.1f} MB ({p_bytes // 4:,} parameters)",
        f"{'row':27s} {'round s':>7s} {'sync s':>7s} {'model s':>7s} {'sync/m':>7s} "
        f"{'cp MB':>7s} {'cp/P':>7s} {'goal s':>7s} {'arrived':>7s}  "
        "each link tx/rx MB per round (shaper drops)",
    ]
    for row in dict.fromkeys([*summaries, *goals]):
        s, g = summaries.get(row, {}), goals.get(row, {})
        cp = s.get("links_per_round", {}).get("cp")
        cp_bytes = cp["tx_bytes"] + cp["rx_bytes"] if cp else None
        sync, model = s.get("sync_s"), s.get("bandwidth_model_s")
        per_link = "  ".join(
            f"{n} {v['tx_bytes'] / MB:.1f}/{v['rx_bytes'] / MB:.1f}"
            + (f" ({v['drops']:.0f})" if v.get("drops", 0) >= 0.5 else "")
            for n, v in s.get("links_per_round", {}).items()
        )
        arrived = f"{g['arrived']}/{len(g['goal_s'])}" if g else "-"
        lines.append(
            f"{row:27s} {_f(s.get('round_s'))} {_f(sync)}{'~' if s.get('sync_estimated') else ' '}"
            f"{_f(model)} {_f(sync / model if sync is not None and model else None)} "
            f"{_f(cp_bytes / MB if cp_bytes is not None else None, 7, 1)} "
            f"{_f(cp_bytes / p_bytes if cp_bytes is not None else None, 7, 4)} "
            f"{_f(g.get('median_goal_s'), 7, 1)} {arrived:>7s}  {per_link}"
        )
    found = ratios(summaries, goals, p_bytes)
    lines.append(
        "round s: a whole round (not an epoch's first); sync s: measured (the local-SGD "
        "rows' average), ~ estimated as round - the least compute (round - sync) of those "
        "rows, an upper bound; model s: the busiest link's "
        "bytes ÷ its rate (tx+rx for the central merge, whose up and down take turns; the "
        "busier direction for the rest); cp: the control plane's link; goal s: median over "
        "seeds, >cap when the median run did not arrive"
    )
    if "goal_ratio" in found:
        lines.append(
            f"time to goal, kubeml's best ({found['best_kubeml']}) ÷ the best peer's "
            f"({found['best_peer']}): {found['goal_ratio']:.2f} (target at 100mbit: ≤ 0.33)"
        )
    for row, fraction in found["cp_bytes_over_p"].items():
        target = " (target sharded: < 1% outside checkpoints)" if "sharded" in row else ""
        quiet, carried = found["cp_outside_checkpoints"].get(row, (None, 0))
        outside = (
            f"; {quiet:.2%} outside the {carried} round(s) that carried a checkpoint"
            if quiet is not None and carried
            else ""
        )
        lines.append(f"{row}: control plane link per round = {fraction:.2%} of P{outside}{target}")
    for row, ratio in found["sync_over_model"].items():
        target = " (target: ≤ 1.5)" if "sharded" in row else ""
        lines.append(f"{row}: sync ÷ bandwidth model = {ratio:.2f}{target}")
    return "\n".join(lines)
