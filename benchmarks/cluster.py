"""A K-AVG round on an emulated network: kubeml's central merge beside DDP with local SGD.

    python -m benchmarks.cluster [--profile 100mbit] [--nodes 2] [--rounds 4] [--k 8]
        [--rows kubeml ddp-local-sgd] [--out FILE.json]

Each row gets a fresh lab (`benchmarks/netlab.py`): the control plane's node `cp` and
`--nodes` worker nodes, each in its own network namespace, every link shaped to the
profile. The workload is a 5.8M-parameter MLP (`benchmarks/functions/mlp_wide_fashion.py`,
P = 23.3 MB) on a cut of Fashion-MNIST sized for `--rounds` + 2 rounds of K batches of 64
per node, one epoch, no validation.

- kubeml: the Ray head (no CPUs) and a kubeml server on the Ray backend on `cp`, one
  1-CPU Ray worker node per worker node, N = nodes. Today every round goes through the
  control plane: N weight buffers up, the new reference down to N functions.
- ddp-local-sgd: one gloo rank per worker node (1 thread), parameters averaged every K
  steps (`cp` stays idle).

Figures per row, over the `--rounds` rounds after the first (which holds the start):
seconds per round, every link's bytes per round from its counters (tx: what the node
sent), and the bandwidth model, the busiest link's bytes ÷ the link's rate, beside the
measured round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.reference import ROOT

ROWS = ("kubeml", "ddp-local-sgd")
MB = 1e6


def _rows_command(row: str, args: argparse.Namespace, lab: Any, data: Path) -> list[str]:
    nodes = json.dumps({name: dataclasses.asdict(node) for name, node in lab.nodes.items()})
    return [
        sys.executable, "-m", "benchmarks.cluster_rows", row, "--data", str(data),
        "--nodes", str(args.nodes), "--k", str(args.k), "--batch", str(args.batch),
        "--lab", nodes,
    ]  # fmt: skip


def _result(output: str, what: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{what} printed no result:\n{output[-3000:]}")
    return json.loads(lines[-1])


def run_kubeml(lab: Any, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from benchmarks.netlab_ray import RayOnLab

    workers = [n for n in lab.nodes if n != "cp"]
    cluster = RayOnLab(lab, head="cp", workers=workers, worker_cpus=1).start(timeout_s=180)
    argv = _rows_command("kubeml", args, lab, data)
    argv += ["--address", cluster.address, "--home", str(lab.tmp / "kubeml-home")]
    done = lab.run("cp", argv, env=cluster.env, timeout_s=args.timeout_s, cwd=ROOT)
    result = _result(done.stdout, f"the kubeml row (stderr: {done.stderr[-2000:]})")
    if result["state"] != "succeeded":
        raise RuntimeError(f"the kubeml task {result['state']}: {result['error']}")
    # Rounds the job merged: round r's mark is when the client first saw round r merged.
    marks = [m for m in result["marks"] if m["round"] >= 1]
    marks = [m for m in marks if m["epoch"] == marks[0]["epoch"]] if marks else []
    if not marks:
        raise RuntimeError(
            f"no merged round seen: {[(m.get('epoch'), m['round']) for m in result['marks']]}"
        )
    return {**result, "marks": marks}


def run_ddp(lab: Any, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    import subprocess

    workers = [n for n in lab.nodes if n != "cp"]
    master = lab.node(workers[0]).address
    env = {"GLOO_SOCKET_IFNAME": lab.node(workers[0]).device, "OMP_NUM_THREADS": "1"}
    procs = []
    for rank, node in enumerate(workers):
        argv = [*_rows_command("ddp", args, lab, data), "--rank", str(rank), "--master", master]
        if rank:  # rank 0 marks the rounds
            argv = argv[: argv.index("--lab")] + argv[argv.index("--rank") :]
        procs.append(lab.popen(node, argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=args.timeout_s)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a DDP rank failed: {[p.returncode for p in procs]}")
    result = _result(outputs[0], "DDP rank 0")
    return {**result, "marks": [m for m in result["marks"] if m["round"] >= 1]}


def summarise(row: str, result: dict[str, Any], rate_bytes_s: float | None) -> dict[str, Any]:
    """Per-round figures between the first and the last merged round's marks."""
    marks = result["marks"]
    if len(marks) < 2:
        raise RuntimeError(f"{row}: fewer than two rounds marked: {marks}")
    first, last = marks[0], marks[-1]
    rounds = last["round"] - first["round"]
    links = {
        node: {
            key: (last["links"][node][key] - first["links"][node][key]) / rounds
            for key in ("tx_bytes", "rx_bytes", "drops")
        }
        for node in last["links"]
    }
    busiest = max(links, key=lambda n: links[n]["tx_bytes"] + links[n]["rx_bytes"])
    both = links[busiest]["tx_bytes"] + links[busiest]["rx_bytes"]
    one_way = max(max(v["tx_bytes"], v["rx_bytes"]) for v in links.values())
    summary: dict[str, Any] = {
        "row": row,
        "rounds": rounds,
        "round_s": (last["t"] - first["t"]) / rounds,
        "links_per_round": links,
        "busiest_link": busiest,
        "busiest_bytes_per_round": both,
        # The busiest link's bytes ÷ its rate: both directions one after the other (the
        # central merge: all up, merge, all down), or the busier direction alone (a ring
        # all-reduce sends and receives at once).
        "model_s": both / rate_bytes_s if rate_bytes_s else None,
        "model_one_way_s": one_way / rate_bytes_s if rate_bytes_s else None,
    }
    syncs = [m["sync_s"] for m in marks[1:] if "sync_s" in m]
    if syncs:
        summary["sync_s"] = statistics.median(syncs)
    if result.get("round_points"):  # the server's own times of each merged round
        times = {
            p["round"]: p["elapsed_s"]
            for p in result["round_points"]
            if p["epoch"] == first["epoch"]
        }
        if first["round"] in times and last["round"] in times:
            summary["server_round_s"] = (times[last["round"]] - times[first["round"]]) / rounds
    return summary


def _s(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.2f}"


def report(summaries: list[dict[str, Any]], args: argparse.Namespace, p_bytes: int) -> str:
    rate_bits = _rate_bits(args.profile)
    by_row = {s["row"]: s for s in summaries}
    ddp = by_row.get("ddp-local-sgd")
    compute_s = ddp["round_s"] - ddp["sync_s"] if ddp and "sync_s" in ddp else None
    lines = [
        f"{args.profile} links, N={args.nodes}, K={args.k}, batch {args.batch}, "
        f"P = {p_bytes / MB:.1f} MB ({p_bytes // 4:,} parameters); per round:",
        f"{'row':14s} {'round s':>7s} {'sync s':>7s} {'model s':>7s} {'1-way s':>7s} "
        f"{'rnd/mdl':>7s}  busiest link MB (tx+rx) | each link tx/rx MB (shaper drops)",
    ]
    for s in summaries:
        sync = s.get("sync_s")
        if sync is None and compute_s is not None:
            sync = s["round_s"] - compute_s  # estimated: the same K steps as DDP's
        model = s["model_s"]
        per_link = "  ".join(
            f"{n} {v['tx_bytes'] / MB:.1f}/{v['rx_bytes'] / MB:.1f}"
            + (f" ({v['drops']:.0f})" if v.get("drops") else "")
            for n, v in s["links_per_round"].items()
        )
        lines.append(
            f"{s['row']:14s} {_s(s['round_s'])} {_s(sync)} {_s(model)} "
            f"{_s(s['model_one_way_s'])} {_s(s['round_s'] / model if model else None)}  "
            f"{s['busiest_link']} {s['busiest_bytes_per_round'] / MB:.1f} | {per_link}"
        )
    lines.append(
        "model s: the busiest link's tx+rx bytes ÷ its rate; 1-way s: its busier direction "
        "÷ the rate; kubeml's sync s: its round less DDP's compute (round - sync)"
    )
    if "kubeml" in by_row:
        cp = by_row["kubeml"]["links_per_round"]["cp"]
        cp_bytes, central = cp["tx_bytes"] + cp["rx_bytes"], 2 * args.nodes * p_bytes
        at_rate = f", {central * 8 / rate_bits:.2f} s at {args.profile}" if rate_bits else ""
        lines.append(
            f"kubeml: the control plane's link carried {cp_bytes / MB:.1f} MB a round = "
            f"{cp_bytes / p_bytes:.2f} P (central merge: 2·N·P = {central / MB:.1f} MB{at_rate})"
        )
    if "kubeml" in by_row and ddp:
        kubeml = by_row["kubeml"]
        ratio = (
            f"ratios: kubeml round ÷ DDP local SGD round {kubeml['round_s'] / ddp['round_s']:.2f}"
        )
        if ddp.get("sync_s"):
            ratio += (
                f"; kubeml round ÷ DDP local SGD's sync {kubeml['round_s'] / ddp['sync_s']:.2f}"
            )
        lines.append(ratio + " (ARCHITECTURE section 6 target, for the network round: ≤ 0.33)")
    return "\n".join(lines)


def _rate_bits(profile: str) -> int | None:
    from benchmarks.netlab import PROFILES

    return PROFILES[profile]


def _data(folder: Path, args: argparse.Namespace) -> None:
    from benchmarks.data import load_fashion_mnist

    # Marks at the end of rounds 1 .. R+1: R whole rounds between them, none of them the
    # first (which holds the task's start).
    rounds = args.rounds + 1
    load_fashion_mnist(args.nodes * args.k * args.batch * rounds, 1024).save(folder)


def main(argv: list[str]) -> int:
    from benchmarks.netlab import PROFILES, Netlab, unavailable

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=list(PROFILES), default="100mbit")
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes, N")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per row")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if reason := unavailable():
        parser.error(f"no emulated network here: {reason}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab tears down first
    os.chdir(ROOT)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"cluster-{stamp}.json"
    from benchmarks.cluster_rows import FUNCTION_FILE
    from benchmarks.reference import build_model

    p_bytes = sum(p.numel() * 4 for p in build_model(0, FUNCTION_FILE).parameters())
    nodes = ["cp", *(f"n{i + 1}" for i in range(args.nodes))]
    summaries, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="kubeml-bench-cluster-") as tmp:
        _data(Path(tmp), args)
        for row in args.rows:
            print(f"{row}: {args.profile}, {args.nodes} worker nodes ...", flush=True)
            with Netlab(nodes, profile=args.profile) as lab:
                run = run_kubeml if row == "kubeml" else run_ddp
                raw[row] = run(lab, args, Path(tmp))
                summaries.append(summarise(row, raw[row], lab.rate_bytes_s()))
            print(json.dumps(summaries[-1]), flush=True)
    text = report(summaries, args, p_bytes)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "args": vars(args) | {"out": str(out)},
        "p_bytes": p_bytes,
        "summaries": summaries,
        "raw": raw,
        "load_average": os.getloadavg(),
    }
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"load average at the end {os.getloadavg()}; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
