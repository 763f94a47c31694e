"""The micro-benchmarks of ARCHITECTURE section 6, run one after another."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.records import Workload

MICRO = ("sync", "cold-start", "cli", "overhead", "upload", "serve")


def run_micro(
    workload: Workload, quick: bool, only: Sequence[str], echo: Callable[[str], None]
) -> dict[str, Any]:
    from benchmarks.micro_overhead import framework_overhead
    from benchmarks.micro_serve import serve_latency
    from benchmarks.micro_start import cli_start, cold_start
    from benchmarks.micro_sync import sync_round
    from benchmarks.micro_upload import upload_memory

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "sync": lambda: sync_round(quick),
        "cold-start": lambda: cold_start(workload, quick),
        "cli": lambda: cli_start(quick),
        "overhead": lambda: framework_overhead(workload, quick),
        "upload": lambda: upload_memory(quick),
        "serve": lambda: serve_latency(quick),
    }
    out: dict[str, Any] = {}
    for name in only:
        echo(f"-- micro {name} ...")
        try:
            out[name] = steps[name]()
        except Exception as exc:
            echo(traceback.format_exc())
            out[name] = {"skipped": f"failed: {exc!r}"}
    return out


def micro_lines(micro: dict[str, Any]) -> str:
    lines = []
    sync = micro.get("sync", {})
    if "ratio" in sync:
        parts = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sync["breakdown_serial_s"].items())
        lines.append(
            f"sync: one K-AVG round, {sync['parameters'] / 1e6:.1f}M params at N=2: "
            f"{sync['round_s'] * 1e3:.1f} ms (median interval between rounds; epoch-time "
            f"difference {sync['end_to_end']['difference_s']['resnet18'] * 1e3:.1f} ms); "
            f"memcpy bound {sync['memcpy_bound_s'] * 1e3:.1f} ms "
            f"({sync['bytes_moved'] / 1e6:.0f} MB at "
            f"{sync['memcpy_bytes_per_s']['2_threads'] / 1e9:.1f} GB/s) -> ratio "
            f"{sync['ratio']:.1f} (target {sync['target']}; with the plain average outer step "
            f"{sync['ratio_average']:.1f}); "
            f"a round of a 2-parameter model "
            f"{sync['tiny_model_round_s'] * 1e3:.1f} ms; serial breakdown: {parts}"
        )
    cold = micro.get("cold-start", {})
    if "warm_s" in cold:
        lines.append(
            f"cold start (submit -> first batch, N={cold['parallelism']}): warm "
            f"{cold['warm_s']:.2f} s, cold {cold['cold_s']:.2f} s; "
            f"a fresh `import torch, kubeml.sdk` takes "
            f"{cold['worker_import_floor_s']:.2f} s (target {cold['target']})"
        )
    cli = micro.get("cli", {})
    if cli:
        timed = [
            f"{name} {v['median_s']:.2f} s"
            + (f" (exit {v['exit_code']})" if v["exit_code"] else "")
            for name, v in cli.items()
            if isinstance(v, dict) and "median_s" in v
        ]
        lines.append(
            f"CLI start: {'; '.join(timed)} (target {cli.get('target')})"
            if timed
            else f"CLI start: skipped: {cli.get('skipped')}"
        )
    over = micro.get("overhead", {})
    if "ratio" in over:
        lines.append(
            f"framework overhead (interleaved pairs): {over['ratio']:.3f} (pooled medians "
            f"{over['pooled_ratio']:.3f}) (target {over['target']})"
        )
    reads = over.get("chunks_vs_memory_map", {})
    if "ratio" in reads:
        lines.append(
            f"chunks vs memory map (interleaved pairs, N=1 K=-1 epochs): memory map ÷ chunks "
            f"samples/s {reads['ratio']:.3f} over {len(reads['pairs_samples_per_s'])} pairs "
            f"(target {reads['target']})"
        )
    if "ratio" in micro.get("upload", {}):
        from benchmarks.micro_upload import upload_line

        lines.append(upload_line(micro["upload"]))
    if "p50_s" in micro.get("serve", {}):
        from benchmarks.micro_serve import serve_line

        lines.append(serve_line(micro["serve"]))
    for name, value in micro.items():
        if isinstance(value, dict) and value.get("skipped") and name != "cli":
            lines.append(f"{name}: skipped: {value['skipped']}")
    return "\n".join(lines)
