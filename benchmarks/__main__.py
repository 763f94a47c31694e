"""`python -m benchmarks`: the benchmark harness of ARCHITECTURE section 6.

    python -m benchmarks                 # every workload, every row, seeds 0 1 2
    python -m benchmarks --workloads mnist5k --seeds 0 --rows pytorch kubeml-defaults
    python -m benchmarks --rows kubeml:k=16:outer=nesterov kubeml:k=-1   # study rows
    python -m benchmarks micro           # K-AVG round vs memcpy, cold start, CLI, overhead
    python -m benchmarks all --quick     # a smoke test of all (cuts, one seed)
    python -m benchmarks profile         # py-spy profiles of kubeml's workers and server
    python -m benchmarks recovery        # a worker SIGKILLed mid-epoch: kubeml vs Ray Train
    python -m benchmarks soak            # 20 minutes of kills; --minutes 1.5 for a short one

Options: --out FILE.json (default benchmarks/results/<command>-<time>.json), --workloads,
--seeds, --rows KEY..., --micro NAME..., --epochs, --goal; soak: --minutes, --epochs.
Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from benchmarks.records import Workload
from benchmarks.reference import ROOT


def _echo(message: str) -> None:
    print(message, flush=True)


def _parse(argv: list[str]) -> argparse.Namespace:
    from benchmarks.micro import MICRO
    from benchmarks.specs import SPECS
    from benchmarks.workload import ROWS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="workload",
        choices=["workload", "micro", "all", "profile", "recovery", "soak"],
    )
    parser.add_argument("--quick", action="store_true", help="a cut that runs in minutes")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument(
        "--rows", nargs="+", help=f"rows to run: {', '.join(ROWS)} or kubeml:k=..:outer=.."
    )
    parser.add_argument("--workloads", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (quick: 0)")
    parser.add_argument(
        "--micro",
        nargs="+",
        choices=list(MICRO),
        default=list(MICRO),
        help="micro-benchmarks to run",
    )
    parser.add_argument("--epochs", type=int, help="epoch cap (default: the workload's)")
    parser.add_argument("--goal", type=float, help="goal accuracy %% (default: the workload's)")
    parser.add_argument("--minutes", type=float, default=20.0, help="soak: how long to kill")
    parser.add_argument("--keep", action="store_true", help="soak: keep its home and records")
    return parser.parse_args(argv)


def _workload(args: argparse.Namespace, name: str, data_dir: Path) -> Workload:

    from benchmarks.specs import prepare

    workload = prepare(name, data_dir, args.quick)
    if args.epochs:
        workload = replace(workload, epochs=args.epochs)
    if args.goal:
        workload = replace(workload, goal_accuracy=args.goal)
    return workload


def main(argv: list[str]) -> int:
    args = _parse(argv)
    # `timeout` and kill send SIGTERM: exit through the finally blocks that stop servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.chdir(ROOT)  # worker processes import `benchmarks` from the working directory
    from benchmarks.report import ratio_lines, workload_table, write_json

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"{args.command}-{stamp}.json"
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    if args.command == "recovery":
        from benchmarks.recovery import recovery_lines, run_recovery

        result = run_recovery(repeat=1 if args.quick else 3, echo=_echo)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        _echo("\n" + recovery_lines(result))
        _echo(f"\nload average at the end {os.getloadavg()}; results written to {out}")
        return 0
    if args.command == "soak":
        return _soak(args, out)
    names = ["fashion"] if args.command in ("micro", "profile") else args.workloads
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="kubeml-bench-data-") as tmp:
        for name in names:
            workload = _workload(args, name, Path(tmp) / name)
            _echo(
                f"workload {name}: {workload.train_size}/{workload.test_size} samples, up to "
                f"{workload.epochs} epochs, goal {workload.goal_accuracy}%, seeds {seeds}, "
                f"{workload.threads} threads in total; load average {os.getloadavg()}"
            )
            if args.command == "profile":
                from benchmarks.profiling import profile

                profile(workload, out.with_suffix(""), _echo)
                return 0
            entry: dict[str, object] = {"workload": workload}
            if args.command in ("workload", "all"):
                from benchmarks.rows_kubeml import close_servers
                from benchmarks.workload import ROWS, ratios_of, run_rows, summarise

                keys = args.rows or list(ROWS)
                try:
                    runs = run_rows(workload, keys, seeds, _echo)
                finally:
                    close_servers()
                rows = summarise(runs, keys)
                entry.update(runs=runs, rows=rows, ratios=ratios_of(rows))
                _echo("\n" + workload_table(rows, workload))
                _echo(ratio_lines(entry["ratios"]) + "\n")  # type: ignore[arg-type]
            if args.command in ("micro", "all") and name == "fashion":
                from benchmarks.micro import micro_lines, run_micro

                entry["micro"] = run_micro(workload, args.quick, args.micro, _echo)
                _echo("\n" + micro_lines(entry["micro"]))  # type: ignore[arg-type]
            results[name] = entry
            write_json(out, results, args.quick)
    _echo(f"\nload average at the end {os.getloadavg()}; results written to {out}")
    return 0


def _soak(args: argparse.Namespace, out: Path) -> int:
    from benchmarks.soak import SoakConfig, run_soak, soak_lines

    config = SoakConfig(duration_s=args.minutes * 60, keep=args.keep)
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    _echo(f"soak: {args.minutes:g} minutes, {config.epochs} epochs a task; {os.getloadavg()}")
    result = run_soak(config, _echo)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    _echo("\n" + soak_lines(result))
    _echo(f"\nload average at the end {os.getloadavg()}; results written to {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
