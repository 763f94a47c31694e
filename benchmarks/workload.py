"""The workload rows, every seed in one run, and the ratios of ARCHITECTURE section 6.

A row is a key: a fixed one (`ROWS`) or a kubeml configuration written as
`kubeml:k=16:outer=nesterov:olr=0.7:om=0.9` (fields: k, outer, olr, om, n, policy,
lrs = lr_scaling, state = optimizer_state), used by the defaults study. Every row runs
once per seed; its time to the goal is the median over the seeds (a seed that misses
the goal counts as slower than any that reached it).
"""

from __future__ import annotations

import os
import statistics
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.records import RowResult, Workload
from benchmarks.reference import now

RowRunner = Callable[[Workload], RowResult]

# kubeml's "tuned" row per workload: the best configuration of the defaults study
# (docs/performance.md, "Defaults chosen by measurement").
TUNED: dict[str, str] = {
    "fashion": "kubeml:k=16:outer=nesterov:olr=0.7:om=0.9:n=2:policy=static",
    "mnist5k": "kubeml:k=8:outer=nesterov:olr=1.0:om=0.8:n=2:policy=static",
}
_FIELDS = {
    "k": ("k", int),
    "outer": ("outer_optimizer", str),
    "olr": ("outer_lr", float),
    "om": ("outer_momentum", float),
    "n": ("parallelism", int),
    "policy": ("policy", str),
    "lrs": ("lr_scaling", str),
    "state": ("optimizer_state", str),
}


def kubeml_settings(key: str) -> dict[str, Any]:
    """TrainRequest fields of a `kubeml:name=value:...` row key."""
    settings: dict[str, Any] = {}
    for part in key.split(":")[1:]:
        name, _, value = part.partition("=")
        if name not in _FIELDS or not value:
            raise SystemExit(f"row {key!r}: unknown setting {part!r} (known: {sorted(_FIELDS)})")
        field, kind = _FIELDS[name]
        settings[field] = kind(value)
    return settings


def _kubeml(key: str, settings: dict[str, Any] | None = None) -> RowRunner:
    def run(workload: Workload) -> RowResult:
        from benchmarks.rows_kubeml import run_kubeml

        if settings is None:
            if key == "kubeml-tuned" and workload.name not in TUNED:
                return RowResult(
                    name=key,
                    framework="kubeml",
                    skipped=f"no tuned configuration for {workload.name} (workload.TUNED)",
                )
            row_key = TUNED[workload.name] if key == "kubeml-tuned" else key
            chosen = kubeml_settings(row_key)
        else:
            chosen = settings
        return run_kubeml(workload, key, chosen)

    return run


def _plain(threads: int | None) -> RowRunner:
    def run(workload: Workload) -> RowResult:
        from benchmarks.rows_torch import run_plain

        return run_plain(workload, threads)

    return run


def _ddp(k: int | None) -> RowRunner:
    def run(workload: Workload) -> RowResult:
        from benchmarks.rows_torch import run_ddp

        return run_ddp(workload, k)

    return run


def _ray(workload: Workload) -> RowResult:
    from benchmarks.rows_ray import run_ray

    return run_ray(workload)


# Run order alternates kubeml and baseline rows, so slow drifts in machine load (others
# share it) do not fall on one side only.
ROWS: dict[str, RowRunner] = {
    "pytorch": _plain(None),
    "kubeml-defaults": _kubeml("kubeml-defaults", {}),
    "pytorch-1thread": _plain(1),
    "ddp": _ddp(None),
    "kubeml-tuned": _kubeml("kubeml-tuned"),
    "ddp-local-sgd-k8": _ddp(8),
    "ray": _ray,
}


def runner(key: str) -> RowRunner:
    if key in ROWS:
        return ROWS[key]
    if key.startswith("kubeml:"):
        kubeml_settings(key)  # fail now on a typo, not after an hour
        return _kubeml(key)
    raise SystemExit(f"unknown row {key!r}: one of {list(ROWS)} or kubeml:k=..:outer=..")


def run_rows(
    workload: Workload,
    keys: Sequence[str],
    seeds: Sequence[int],
    echo: Callable[[str], None],
) -> list[RowResult]:
    """Run every row at every seed (odd seeds in reverse row order, so a drift in machine
    load falls on both ends); a row that fails is reported as skipped, the rest still run."""
    runners = {key: runner(key) for key in keys}
    results = []
    for rep, seed in enumerate(seeds):
        at_seed = replace(workload, seed=seed)
        for key in keys if rep % 2 == 0 else list(reversed(keys)):
            echo(f"-- {workload.name} {key} seed {seed} ...")
            started, load_before = now(), os.getloadavg()[0]
            try:
                row = runners[key](at_seed)
            except Exception as exc:
                echo(traceback.format_exc())
                row = RowResult(name=key, framework=key.split("-")[0], skipped=f"failed: {exc!r}")
            row = replace(
                row,
                key=key,
                goal_accuracy=workload.goal_accuracy,
                load_average=(load_before, os.getloadavg()[0]),
                repeat=seed,
            )
            results.append(row)
            echo(f"   {key} seed {seed}: {_one_line(row)} ({now() - started:.1f} s)")
    return results


@dataclass
class RowSummary:
    """One row over its seeds: medians, and every sample."""

    key: str
    name: str
    framework: str
    runs: list[RowResult]

    def _values(self, attr: str) -> list[float]:
        """Per seed; a seed that missed the goal (or failed) is +inf."""
        out = []
        for r in self.runs:
            value = None if r.skipped else getattr(r, attr)
            out.append(float("inf") if value is None else float(value))
        return out

    @property
    def user_time_s(self) -> float | None:
        """Median time to the goal as a user meets it (see `RowResult.user_time_to_goal_s`)."""
        return _finite(statistics.median(self._values("user_time_to_goal_s")))

    @property
    def time_to_goal_s(self) -> float | None:
        """Median from the start of training (kubeml: the submit) to the goal."""
        return _finite(statistics.median(self._values("time_to_goal_s")))

    @property
    def wall_to_goal_s(self) -> float | None:
        return _finite(statistics.median(self._values("wall_to_goal_s")))

    @property
    def goal_epochs(self) -> float | None:
        values = [
            float(r.goal_epoch.epoch) if r.goal_epoch and not r.skipped else float("inf")
            for r in self.runs
        ]
        return _finite(statistics.median(values))

    @property
    def samples_per_s(self) -> float | None:
        rates = [e.samples_per_s for r in self.runs if not r.skipped for e in r.epochs]
        return statistics.median(rates) if rates else None

    @property
    def startup_s(self) -> float | None:
        values = [r.startup_s for r in self.runs if not r.skipped]
        return statistics.median(values) if values else None

    @property
    def skipped(self) -> str | None:
        reasons = [r.skipped for r in self.runs if r.skipped]
        return reasons[0] if reasons and len(reasons) == len(self.runs) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "framework": self.framework,
            "median_user_time_to_goal_s": self.user_time_s,
            "median_time_to_goal_s": self.time_to_goal_s,
            "median_wall_to_goal_s": self.wall_to_goal_s,
            "median_goal_epoch": self.goal_epochs,
            "median_samples_per_s": self.samples_per_s,
            "median_startup_s": self.startup_s,
            "skipped": self.skipped,
            "per_seed": [
                {
                    "seed": r.repeat,
                    "user_time_to_goal_s": r.user_time_to_goal_s,
                    "time_to_goal_s": r.time_to_goal_s,
                    "goal_epoch": r.goal_epoch.epoch if r.goal_epoch else None,
                    "accuracy_per_epoch": [e.accuracy for e in r.epochs],
                    "skipped": r.skipped,
                }
                for r in self.runs
            ],
        }


def _finite(value: float) -> float | None:
    return value if value != float("inf") else None


def summarise(runs: Sequence[RowResult], keys: Sequence[str]) -> list[RowSummary]:
    out = []
    for key in keys:
        mine = [r for r in runs if r.key == key]
        if mine:
            first = next((r for r in mine if not r.skipped), mine[0])
            out.append(RowSummary(key, first.name, first.framework, mine))
    return out


def _one_line(row: RowResult) -> str:
    if row.skipped:
        return f"skipped: {row.skipped}"
    acc = ", ".join(f"{e.accuracy:.2f}" for e in row.epochs)
    goal = f"{row.time_to_goal_s:.1f} s" if row.time_to_goal_s is not None else "missed"
    return f"to goal {goal}, accuracy per epoch [{acc}], {row.median_samples_per_s or 0:.0f}/s"


def ratios_of(rows: Sequence[RowSummary]) -> dict[str, Any]:
    """Best kubeml row / best peer row by median time to the goal as a user meets it (the
    target), and by training time alone (from the start of training, no start-up)."""
    out: dict[str, Any] = {}
    reached = sorted(
        (r for r in rows if r.user_time_s is not None), key=lambda r: r.user_time_s or 0.0
    )
    out["time_to_goal_ranking"] = [
        {"key": r.key, "median_user_time_to_goal_s": r.user_time_s} for r in reached
    ]
    out["not_reaching_goal"] = [r.key for r in rows if r.user_time_s is None and not r.skipped]
    for label, attr in (("user_time_to_goal", "user_time_s"), ("training_time", "time_to_goal_s")):
        kube = [r for r in reached if r.framework == "kubeml" and getattr(r, attr) is not None]
        peers = [r for r in reached if r.framework != "kubeml" and getattr(r, attr) is not None]
        if kube and peers:
            best_kube = min(kube, key=lambda r: getattr(r, attr))
            best_peer = min(peers, key=lambda r: getattr(r, attr))
            kube_s, peer_s = getattr(best_kube, attr), getattr(best_peer, attr)
            out[f"{label}_best_kubeml_vs_best_peer"] = {
                "kubeml": best_kube.key,
                "kubeml_s": kube_s,
                "peer": best_peer.key,
                "peer_s": peer_s,
                "ratio": kube_s / peer_s,
                "target": "<= 0.80",
            }
    return out
