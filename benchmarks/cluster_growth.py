"""The control plane's cost per round as N grows: central merge beside sharded (issue 18, item 6).

    python -m benchmarks.cluster_growth [--ns 4 8 16 32] [--nodes 4] [--cpus 8]
        [--rounds 5] [--modes central sharded] [--profile 1gbit] [--poll-s 0.5] [--pace-s 0]
        [--out FILE.json]

A lab (`benchmarks/netlab.py`) of the control plane's node `cp` (the Ray head, no CPUs,
and a kubeml server on the Ray backend) and `--nodes` Ray worker nodes of `--cpus` logical
CPUs each (more than the machine's cores: the functions are small), every link shaped to
`--profile`. The model is small on purpose, so that the control plane's own work shows:
`benchmarks/functions/mlp_wide_fashion.py` at width 64 (55k parameters, P = 0.2 MB) on a
cut of Fashion-MNIST. For each mode (`central`: shards=0, the control plane merges every
round; `sharded`: shards=null, a shard server per node) and each N, a throw-away task
warms N functions, then a task of one epoch at K=`--k` trains until `--rounds` whole
rounds have passed its second, and is stopped. Around those rounds the harness reads the
server's CPU time (`/proc/<pid>/stat` utime + stime: every thread of the `kubeml server`
process, its Ray driver's included; `thr s`: the same from its threads' schedstat, in ns
where stat counts 10 ms ticks; and by thread name: the driver and the server start with
`benchmarks/thread_names` on PYTHONPATH, which gives Python's threads their names at the
OS level too; a thread that has ended is in `cpu s` only) and the control plane link's
counters; the figures are per round, the bytes as a fraction of P. The client reads the
task every `--poll-s` (0.5 s, as `kubeml task watch` does; until session 22, 0.1 s, when
those reads were about half the server's Python time at N=32): that HTTP work, and Ray's
own background work, are in the server's CPU too, at about the same rate at every N, so
in proportion to a round's length, not to N.
With `--pace-s S` each function sleeps S seconds after each batch, which brings the rounds'
lengths closer at every N (as on a cluster with a core per function) as far as the
functions' own work on the machine's cores allows.
After each task the server's idle rate (the same polling, no task running) is read, and
`net s` is a round's CPU less that rate times the round's length.

The link's bytes include each function's invocation and report (the central merge's
measured 2·N·P plus 1-8 KB per function a round; `cp B/N` is the bytes per function),
which at width 64 are already more than 1% of P: for the bytes target, a wider MLP
(`--width 1024`: 1.9M parameters, P = 7.5 MB) leaves room for them.

Printed: the curve per mode, CPU(N=max) ÷ CPU(N=min) (target sharded: ≤ 1.5) and the
largest bytes fraction (target sharded: < 1% of P).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.netlab import NODE_DEVICE
from benchmarks.reference import ROOT, free_port

FUNCTION, DATASET, WIDTH = "smallmlp", "fashion", 64
MODES: dict[str, dict[str, Any]] = {"central": {"shards": 0}, "sharded": {"shards": None}}


def function_source(width: int = WIDTH, pace_s: float = 0.0) -> str:
    """The wide MLP's file at another width (its only module constant that sizes it), and
    sleeping `pace_s` after each batch."""
    source = (ROOT / "benchmarks" / "functions" / "mlp_wide_fashion.py").read_text()
    step = "        self.optimizer.step()\n        return loss.item()\n"
    if "\nWIDTH = 2048\n" not in source or step not in source:
        raise RuntimeError("mlp_wide_fashion.py no longer sets WIDTH = 2048 or steps so")
    source = source.replace("\nWIDTH = 2048\n", f"\nWIDTH = {width}\n")
    if pace_s > 0:
        sleep = f"        __import__('time').sleep({pace_s})\n"
        source = source.replace(step, step.replace("        return", sleep + "        return"))
    return source


def p_bytes(width: int = WIDTH) -> int:
    return 4 * (784 * width + width + width * width + width + width * 10 + 10)


# -- inside the lab: the driver on the control plane's node ----------------------------------
def _cp_bytes() -> int:
    """The control plane link's bytes both ways: the driver runs in `cp`'s namespace, whose
    own sysfs `ip netns exec` mounts (microseconds, where `ip -s link` takes a process)."""
    stats = Path(f"/sys/class/net/{NODE_DEVICE}/statistics")
    return sum(int((stats / f"{way}_bytes").read_text()) for way in ("tx", "rx"))


def _thread_ns_by_name(pid: int) -> dict[str, int]:
    """CPU nanoseconds of the process's live threads, summed by thread name (Ray's threads
    are named; Python's all carry the process's name)."""
    out: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            ns = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            out[name] = out.get(name, 0) + ns
    return out


def _reading(pid: int, round_index: int) -> tuple[int, float, int, int, int, dict[str, int]]:
    from kubeml.procs import cpu_ticks

    named = _thread_ns_by_name(pid)
    return round_index, time.time(), cpu_ticks(pid), sum(named.values()), _cp_bytes(), named


def _thread_ns(pid: int) -> int:
    """CPU nanoseconds of the process's live threads (schedstat): a finer cross-check of
    /proc/<pid>/stat's ticks."""
    return sum(_thread_ns_by_name(pid).values())


def _idle_rate(client: Any, task_id: str, pid: int, poll_s: float, seconds: float = 5.0) -> float:
    """The server's CPU seconds per second with no task running, polled as during the
    rounds: what a round's figure holds in proportion to its length, not to N."""
    start, t0 = _thread_ns(pid), time.time()
    while time.time() - t0 < seconds:
        client.get_task(task_id)
        time.sleep(poll_s)
    return (_thread_ns(pid) - start) / 1e9 / (time.time() - t0)


def _measure(client: Any, args: argparse.Namespace, pid: int, n: int, fields: dict) -> dict:
    """One timed task at N = n: the server's CPU seconds and cp's bytes per whole round."""
    request = dict(
        function=FUNCTION, dataset=DATASET, epochs=1, parallelism=n, k=args.k,
        batch_size=args.batch, lr=0.05, static=True, validate_every=0, seed=0,
        checkpoint_every_s=0.0, **fields,
    )  # fmt: skip
    tick = os.sysconf("SC_CLK_TCK")
    task_id = client.train(**request)
    first, last, start = 2, 2 + args.rounds, None
    while True:
        info = client.get_task(task_id)
        if info.state.finished:
            raise RuntimeError(f"task {info.state.value} before round {last}: {info.error}")
        if start is None and info.round >= first:
            start = _reading(pid, info.round)
        if start is not None and info.round >= last:
            end = _reading(pid, info.round)
            break
        time.sleep(args.poll_s)
    client.stop_task(task_id)
    client.wait(task_id, timeout_s=600)
    rounds = end[0] - start[0]
    names = {k: (v - start[5].get(k, 0)) / 1e9 / rounds for k, v in end[5].items()}
    return {
        "idle_cpu_s_per_s": _idle_rate(client, task_id, pid, args.poll_s),
        "threads_s_per_round": dict(sorted(names.items(), key=lambda kv: -kv[1])[:10]),
        "n": n, "rounds": rounds, "round_s": (end[1] - start[1]) / rounds,
        "cpu_s_per_round": (end[2] - start[2]) / tick / rounds,
        "cpu_thread_s_per_round": (end[3] - start[3]) / 1e9 / rounds,
        "cp_bytes_per_round": (end[4] - start[4]) / rounds,
    }  # fmt: skip


def drive(args: argparse.Namespace) -> None:
    """A kubeml server on the lab's Ray; one JSON line per (mode, N)."""
    from benchmarks.rows_kubeml import warm_up_task
    from kubeml.client import Client
    from kubeml.client.local_server import ensure_server, server_status, stop_server
    from kubeml.settings import Settings

    settings = Settings(
        home=Path(args.home), port=free_port(), backend="ray", ray_address=args.address,
        capacity=max(args.ns), round_timeout_s=900, auto_resume=False,
    )  # fmt: skip
    client = Client(ensure_server(settings, quiet=True), settings=settings)
    try:
        status = server_status(settings) or {}
        pid = int(status["pid"])
        data = Path(args.data)
        client.create_function(FUNCTION, function_source(args.width, args.pace_s))
        client.create_dataset(
            DATASET, *(data / f"{part}.npy" for part in ("train_x", "train_y", "test_x", "test_y"))
        )
        for mode, fields in json.loads(args.fields).items():
            for n in args.ns:
                try:
                    warm = dict(function=FUNCTION, dataset=DATASET, epochs=1, parallelism=n, k=1,
                                batch_size=args.batch, static=True, validate_every=0,
                                **fields)  # fmt: skip
                    warm_up_task(client, warm, timeout_s=900)
                    result = {"mode": mode, **_measure(client, args, pid, n, fields)}
                except Exception as exc:
                    result = {"mode": mode, "n": n, "error": f"{type(exc).__name__}: {exc}"}
                print(json.dumps(result), flush=True)
    finally:
        client.close()
        stop_server(settings)


# -- outside: the lab, the report ------------------------------------------------------------
def _net(r: dict[str, Any]) -> float:
    """A round's CPU less what the idle server spends in as long (`nan`: not measured)."""
    if "idle_cpu_s_per_s" not in r:
        return float("nan")
    return r["cpu_thread_s_per_round"] - r["idle_cpu_s_per_s"] * r["round_s"]


def report(results: list[dict[str, Any]], p: int, setting: str) -> tuple[str, dict[str, Any]]:
    lines = [
        f"control plane per round, {setting}, P = {p / 1e6:.3f} MB",
        f"{'mode':8s} {'N':>3s} {'round s':>8s} {'cpu s':>8s} {'thr s':>8s} {'net s':>8s} "
        f"{'cp bytes':>10s} {'cp/P':>8s} {'cp B/N':>8s}",
    ]
    figures: dict[str, Any] = {}
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = sorted((r for r in results if r["mode"] == mode and "error" not in r),
                      key=lambda r: r["n"])  # fmt: skip
        for r in rows:
            lines.append(
                f"{mode:8s} {r['n']:3d} {r['round_s']:8.3f} {r['cpu_s_per_round']:8.4f} "
                f"{r['cpu_thread_s_per_round']:8.4f} {_net(r):8.4f} "
                f"{r['cp_bytes_per_round']:10.0f} {r['cp_bytes_per_round'] / p:8.2%} "
                f"{r['cp_bytes_per_round'] / r['n']:8.0f}"
            )
        for r in results:
            if r["mode"] == mode and "error" in r:
                lines.append(f"{mode:8s} {r['n']:3d} failed: {r['error'][:300]}")
        if len(rows) >= 2 and rows[0]["cpu_s_per_round"] > 0:
            ratio = rows[-1]["cpu_s_per_round"] / rows[0]["cpu_s_per_round"]
            threads = rows[-1]["cpu_thread_s_per_round"] / rows[0]["cpu_thread_s_per_round"]
            net = _net(rows[-1]) / _net(rows[0]) if _net(rows[0]) > 0 else float("nan")
            fraction = max(r["cp_bytes_per_round"] for r in rows) / p
            figures[mode] = {"cpu_ratio": ratio, "cpu_thread_ratio": threads,
                             "net_cpu_ratio": net, "max_cp_over_p": fraction}  # fmt: skip
            target = " (targets sharded: ≤ 1.5, < 1%)" if mode == "sharded" else ""
            lines.append(
                f"{mode}: CPU(N={rows[-1]['n']}) ÷ CPU(N={rows[0]['n']}) = {ratio:.2f} "
                f"(threads' schedstat: {threads:.2f}; less the idle rate: {net:.2f}); "
                f"the control plane link's bytes per round at most {fraction:.2%} of P{target}"
            )
    return "\n".join(lines), figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_growth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16, 32], help="N values")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--nodes", type=int, default=4, help="Ray worker nodes")
    parser.add_argument("--cpus", type=int, default=8, help="logical CPUs per worker node")
    parser.add_argument("--rounds", type=int, default=50, help="timed whole rounds per N")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=WIDTH, help="the MLP's hidden width")
    parser.add_argument(
        "--pace-s", type=float, default=0.0,
        help="each function sleeps this long after each batch (rounds of about the same "
        "length at every N, as on a cluster with a core per function)",
    )  # fmt: skip
    parser.add_argument("--profile", default="1gbit")
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.5,
        help="how often the task is read (kubeml task watch: 0.5)",
    )
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/)")
    # The driver's own options (it runs inside the lab, on the control plane's node).
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    for name in ("--address", "--home", "--data", "--fields"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ns = sorted(args.ns)
    if args.drive:
        drive(args)
        return 0
    return orchestrate(args, parser)


def _modes(args: argparse.Namespace) -> tuple[dict[str, dict], dict[str, str]]:
    """Each mode's request fields, and the modes this kubeml cannot run, with why."""
    from benchmarks.cluster import supported_fields

    if "shards" in supported_fields():
        return {m: MODES[m] for m in args.modes}, {}
    # Before sharding every round is the central merge, and the field is refused.
    skipped = {m: "this kubeml's train request has no shards" for m in args.modes if m != "central"}
    return {m: {} for m in args.modes if m == "central"}, skipped


def orchestrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from benchmarks.cluster import _lines
    from benchmarks.data import load_fashion_mnist
    from benchmarks.netlab import Netlab, unavailable
    from benchmarks.netlab_ray import RayOnLab

    if reason := unavailable():
        parser.error(f"no emulated network here: {reason}")
    if max(args.ns) > args.nodes * args.cpus:
        parser.error(f"N={max(args.ns)} needs {args.nodes} nodes x {args.cpus} CPUs or more")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab tears down first
    os.chdir(ROOT)
    modes, skipped = _modes(args)
    for mode, reason in skipped.items():
        print(f"{mode}: skipped: {reason}", flush=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"cluster-growth-{stamp}.json"
    nodes = ["cp", *(f"w{i + 1}" for i in range(args.nodes))]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kubeml-bench-growth-") as tmp:
        # Enough samples for the warm-up's round and `rounds` + 7 rounds at the largest N.
        per_round = max(args.ns) * args.k * args.batch
        load_fashion_mnist(per_round * (args.rounds + 8), 512).save(Path(tmp))
        with Netlab(nodes, profile=args.profile) as lab:
            cluster = RayOnLab(lab, head="cp", workers=nodes[1:], worker_cpus=args.cpus)
            cluster.start(timeout_s=300)
            argv = [
                sys.executable, "-m", "benchmarks.cluster_growth", "--drive",
                "--address", cluster.address, "--home", str(lab.tmp / "kubeml-home"),
                "--data", tmp, "--fields", json.dumps(modes),
                "--ns", *map(str, args.ns), "--rounds", str(args.rounds), "--k", str(args.k),
                "--batch", str(args.batch), "--width", str(args.width),
                "--pace-s", str(args.pace_s), "--poll-s", str(args.poll_s),
            ]  # fmt: skip
            print(f"{' '.join(modes)}: N = {args.ns} on {args.nodes} nodes ...", flush=True)
            with open(lab.tmp / "driver.log", "w") as err:
                named = str(ROOT / "benchmarks" / "thread_names")  # CPU by thread name
                path = os.pathsep.join(filter(None, [named, os.environ.get("PYTHONPATH")]))
                proc = lab.popen("cp", argv, env={**cluster.env, "PYTHONPATH": path}, cwd=ROOT,
                                 stdout=subprocess.PIPE,
                                 stderr=err, text=True)  # fmt: skip
                results = _lines(proc, 600 * len(modes) * len(args.ns) + 300)
            if proc.returncode:
                print(f"the driver exited {proc.returncode}:\n{lab.log('driver.log')[-3000:]}")
    setting = (
        f"{args.profile} links, {args.nodes} nodes x {args.cpus} CPUs, K={args.k}, "
        f"batch {args.batch}, width {args.width}, {args.rounds} whole rounds per N"
        + (f", each function sleeping {args.pace_s} s a batch" if args.pace_s else "")
    )
    text, figures = report(results, p_bytes(args.width), setting)
    for mode, reason in skipped.items():
        text += f"\n{mode}: skipped: {reason}"
    load = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "args": vars(args) | {"out": str(out)}, "p_bytes": p_bytes(args.width),
        "results": results, "figures": figures, "skipped": skipped, "load_average": load,
    }  # fmt: skip
    out.write_text(json.dumps(saved, indent=1, default=str))
    print(f"\n{text}\nload average at the end {load}; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
