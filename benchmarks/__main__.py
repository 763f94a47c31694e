"""`python -m benchmarks`: the benchmark harness of ARCHITECTURE section 6.

    python -m benchmarks                 # the reference workload, every row (~10 min)
    python -m benchmarks --quick         # a cut of it (20k/5k samples, 3 epochs, goal 82%)
    python -m benchmarks micro           # K-AVG round vs memcpy, cold start, CLI, overhead
    python -m benchmarks all --quick     # both, in one run (< 5 min on an idle 2-core box)
    python -m benchmarks profile         # py-spy profiles of kubeml's workers and server

Options: --out FILE.json (default benchmarks/results/<command>-<time>.json), --rows KEY...,
--micro NAME..., --repeat N, --epochs, --goal, --seed. Run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from benchmarks.records import Workload
from benchmarks.reference import ROOT


def _echo(message: str) -> None:
    print(message, flush=True)


def _parse(argv: list[str]) -> argparse.Namespace:
    from benchmarks.micro import MICRO
    from benchmarks.workload import ROWS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", default="workload", choices=["workload", "micro", "all", "profile"]
    )
    parser.add_argument("--quick", action="store_true", help="a cut that runs in minutes")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="workload rows to run")
    parser.add_argument(
        "--micro",
        nargs="+",
        choices=list(MICRO),
        default=list(MICRO),
        help="micro-benchmarks to run",
    )
    parser.add_argument("--epochs", type=int, help="epoch cap (default 8; quick 3)")
    parser.add_argument("--goal", type=float, help="goal accuracy %% (default 87; quick 82)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="passes over the rows; the table shows each row's median pass",
    )
    return parser.parse_args(argv)


def _workload(args: argparse.Namespace, data_dir: Path) -> Workload:
    from benchmarks.data import load_fashion_mnist

    train, test = (20_000, 5_000) if args.quick else (None, None)
    arrays = load_fashion_mnist(train, test)
    arrays.save(data_dir)
    return Workload(
        data_dir=data_dir,
        train_size=len(arrays.train_x),
        test_size=len(arrays.test_x),
        epochs=args.epochs or (3 if args.quick else 8),
        goal_accuracy=args.goal or (82.0 if args.quick else 87.0),
        seed=args.seed,
        threads=min(2, os.cpu_count() or 1),
    )


def main(argv: list[str]) -> int:
    args = _parse(argv)
    os.chdir(ROOT)  # worker processes import `benchmarks` from the working directory
    from benchmarks.reference import check_function_matches
    from benchmarks.report import ratio_lines, workload_table, write_json

    check_function_matches()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"{args.command}-{stamp}.json"
    with tempfile.TemporaryDirectory(prefix="kubeml-bench-data-") as tmp:
        workload = _workload(args, Path(tmp))
        _echo(
            f"workload: {workload.train_size}/{workload.test_size} samples, up to "
            f"{workload.epochs} epochs, goal {workload.goal_accuracy}%, "
            f"{workload.threads} threads in total; load average {os.getloadavg()}"
        )
        if args.command == "profile":
            from benchmarks.profiling import profile

            profile(workload, out.with_suffix(""), _echo)
            return 0
        rows, runs, ratios, micro = [], [], {}, None
        if args.command in ("workload", "all"):
            from benchmarks.workload import ROWS, ratios_of, representatives, run_rows

            keys = args.rows or list(ROWS)
            runs = run_rows(workload, keys, _echo, args.repeat)
            rows = representatives(runs, keys)
            ratios = ratios_of(rows, runs)
        if args.command in ("micro", "all"):
            from benchmarks.micro import run_micro

            micro = run_micro(workload, args.quick, args.micro, _echo)
        write_json(out, workload, rows, runs, ratios, micro, args.quick)
    if rows:
        _echo("\n" + workload_table(rows, workload.goal_accuracy))
        _echo("\n" + ratio_lines(ratios))
    if micro is not None:
        from benchmarks.micro import micro_lines

        _echo("\n" + micro_lines(micro))
    _echo(f"\nload average at the end {os.getloadavg()}; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
