"""Datasets larger than one object store on a Ray cluster: the control plane's memory and link.

    python -m benchmarks.data_cluster --part memory  [--train-mb 2200] [--epochs 1] [--quick]
    python -m benchmarks.data_cluster --part network [--train-mb 256] [--epochs 3] [--quick]
    python -m benchmarks micro --micro overhead      # the third figure: chunks vs memory map

Issue 21, item 6. The dataset, "tiles": Fashion-MNIST drawn at twice its size at a random
place in 3x64x64 uint8 noise (12 KiB a sample), written to `.npy` files block by block
and uploaded with the client as a user uploads one (streamed); the function,
`benchmarks/functions/tiles_pooled.py` (a 4x4 average pool, then 768-128-10), trained
at N=4, K=`--k`, batch `--batch`, validated every epoch.

`memory`: a local Ray cluster (`ray.cluster_utils.Cluster`, as the integration tests'
`cluster`): a head with no CPUs and `--nodes` one-CPU nodes, every object store
`--store-mb` (512), and a kubeml server on the Ray backend (`ensure_server`, as the CLI
starts one). A thread reads the server process's `/proc/PID/status` every 0.2 s: idle is
its RSS after the upload, before the task; the figure is the peak during the task less
idle (target: under 300 MB), with the head's GCS and raylet beside it.

`network`: a lab (`benchmarks/netlab.py`) of `cp` (the Ray head, no CPUs, and the kubeml
server) and `--nodes` one-CPU Ray nodes, each in its own namespace, every link
`--profile` (100mbit). A driver on `cp` uploads (over cp's loopback), trains `--epochs`,
polls the task every 0.05 s and reads cp's link counters whenever its epoch moves; the
figure is the link's bytes (both ways) in each epoch ÷ the dataset's bytes (target: at
most 5 % from the second epoch on; the first carries every chunk once).

Each part prints its figures and writes them to `--out` (default benchmarks/results/).
`--quick`: object stores of 96 MiB and a split of 420 MB, one epoch (memory); a split of
64 MB, two epochs (network).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference import ROOT, free_port

FUNCTION, DATASET = "tiles", "tiles"
FUNCTION_FILE = ROOT / "benchmarks" / "functions" / "tiles_pooled.py"
SHAPE = (3, 64, 64)  # uint8: 12 KiB a sample
MB, MIB = 10**6, 2**20
TEST_SIZE = 2048
MEMORY_TARGET_BYTES = 300 * MB
LINK_TARGET = 0.05


# -- the dataset ---------------------------------------------------------------------------
def write_tiles(folder: Path, train_size: int, test_size: int, seed: int = 0) -> list[Path]:
    """The four .npy files of "tiles", written 4,096 samples at a time (never whole in memory)."""
    from benchmarks.data import FIELDS, load_fashion_mnist

    base = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in (("train", train_size), ("test", test_size)):
        images, labels = getattr(base, f"{split}_x"), getattr(base, f"{split}_y")
        x = np.lib.format.open_memmap(folder / f"{split}_x.npy", "w+", np.uint8, (size, *SHAPE))
        y = np.lib.format.open_memmap(folder / f"{split}_y.npy", "w+", np.int64, (size,))
        for start in range(0, size, 4096):
            pick = np.arange(start, min(size, start + 4096)) % len(images)
            block = rng.integers(0, 64, (len(pick), *SHAPE), dtype=np.uint8)
            drawn = images[pick].repeat(2, axis=1).repeat(2, axis=2) // 4 * 3  # 56x56, <= 189
            top, left = rng.integers(0, SHAPE[1] - 56 + 1, 2)
            block[:, :, top : top + 56, left : left + 56] += drawn[:, None]
            x[start : start + len(pick)] = block
            y[start : start + len(pick)] = labels[pick]
        x.flush()
        y.flush()
        del x, y
    return [folder / f"{field}.npy" for field in FIELDS]


def dataset_bytes(train_size: int, test_size: int) -> int:
    """The samples' bytes, features and labels, both splits (what the chunks hold)."""
    return (train_size + test_size) * (int(np.prod(SHAPE)) + 8)


def samples_for(train_mb: float) -> int:
    return int(train_mb * MB) // int(np.prod(SHAPE))


def _request(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        function=FUNCTION, dataset=DATASET, epochs=args.epochs, parallelism=args.nodes,
        k=args.k, batch_size=args.batch, lr=0.01, static=True, validate_every=1, seed=0,
    )  # fmt: skip


def _settings(home: Path, address: str, nodes: int, train_mb: float) -> Any:
    from kubeml.settings import Settings

    return Settings(
        home=home, port=free_port(), backend="ray", ray_address=address, capacity=nodes,
        round_timeout_s=900, auto_resume=False, api_token=None, url=None,
        max_upload_mb=int(train_mb * 1.2 / 1.048576) + 64,
    )  # fmt: skip


def _upload(client: Any, paths: list[Path]) -> float:
    started = time.perf_counter()
    client.create_function(FUNCTION, FUNCTION_FILE.read_text())
    client.create_dataset(DATASET, *paths)
    return time.perf_counter() - started


def _history(client: Any, task_id: str) -> list[dict[str, Any]]:
    return [
        {"epoch": e.epoch, "accuracy": e.accuracy, "train_loss": e.train_loss, "rounds": e.rounds}
        for e in client.get_history(task_id).epochs
    ]


# -- part 1: the control plane's memory ----------------------------------------------------
class _Peaks:
    """The largest value of some `/proc/PID/status` fields, read every `every_s` in a thread."""

    def __init__(self, fields: dict[str, tuple[int, str]], every_s: float = 0.2) -> None:
        self.fields = fields  # name -> (pid, field)
        self.every_s = every_s
        self.peak = self.read()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def read(self) -> dict[str, int]:
        from benchmarks.micro_upload import _kib

        now = {}
        for name, (pid, field) in self.fields.items():
            with contextlib.suppress(OSError, KeyError):  # a process that ended
                now[name] = _kib(pid, field)
        return now

    def _poll(self) -> None:
        while not self._done.wait(self.every_s):
            for name, value in self.read().items():
                self.peak[name] = max(self.peak.get(name, 0), value)

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _ray_cluster(args: argparse.Namespace, temp: Path) -> Any:
    """A head with no CPUs and `args.nodes` one-CPU nodes, object stores of `store_mb`."""
    import ray
    from ray.cluster_utils import Cluster

    store = args.store_mb * MIB
    common = {"object_store_memory": store, "temp_dir": str(temp)}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, **common},
    )
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=1, **common)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
    finally:
        ray.shutdown()  # the server is the cluster's only driver
    return cluster


def _watched(pid: int, cluster: Any) -> dict[str, tuple[int, str]]:
    from ray._private import ray_constants

    fields = {"server_rss": (pid, "VmRSS"), "server_anon": (pid, "RssAnon"),
              "server_shmem": (pid, "RssShmem")}  # fmt: skip
    for kind in (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET):
        for info in cluster.head_node.all_processes.get(kind, []):
            fields[f"head_{kind}_rss"] = (info.process.pid, "VmRSS")
    return fields


def memory(args: argparse.Namespace) -> dict[str, Any]:
    from kubeml.client import Client
    from kubeml.client.local_server import ensure_server, server_status, stop_server

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    train_size = samples_for(args.train_mb)
    tmp = Path(tempfile.mkdtemp(prefix="kubeml-bench-data-"))
    cluster = settings = None
    try:
        paths = write_tiles(tmp / "data", train_size, TEST_SIZE)
        cluster = _ray_cluster(args, tmp / "ray")
        settings = _settings(tmp / "home", cluster.address, args.nodes, args.train_mb)
        with Client(ensure_server(settings, quiet=True), settings=settings) as client:
            pid = int((server_status(settings) or {})["pid"])
            fields = _watched(pid, cluster)
            started = _Peaks(fields).read()
            with _Peaks(fields) as upload:
                upload_s = _upload(client, paths)
            shutil.rmtree(tmp / "data")  # the home holds the chunks now
            time.sleep(2.0)
            idle = _Peaks(fields).read()
            with _Peaks(fields) as training:
                begun = time.perf_counter()
                task_id = client.train(**_request(args))
                info = client.wait(task_id, timeout_s=args.cap_s)
                train_s = time.perf_counter() - begun
            history = _history(client, task_id)
        spilled = sum(f.stat().st_size for f in (tmp / "ray").rglob("*spill*/**/*") if f.is_file())
    finally:
        if settings is not None:
            stop_server(settings, timeout_s=60)
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    growth = training.peak["server_rss"] - idle["server_rss"]
    return {
        "train_size": train_size, "test_size": TEST_SIZE,
        "dataset_bytes": dataset_bytes(train_size, TEST_SIZE),
        "store_bytes": args.store_mb * MIB, "nodes": args.nodes, "upload_s": upload_s,
        "state": info.state.value, "error": info.error, "train_s": train_s,
        "epochs": history, "rss_started": started, "rss_idle": idle,
        "peak_upload": upload.peak, "peak_training": training.peak,
        "server_peak_growth_bytes": growth, "spilled_bytes_at_end": spilled,
        "target": "peak - idle < 300 MB", "met": growth < MEMORY_TARGET_BYTES,
    }  # fmt: skip


def memory_lines(r: dict[str, Any]) -> str:
    idle, peak = r["rss_idle"], r["peak_training"]
    lines = [
        f"tiles: {r['train_size']:,} train samples, {r['dataset_bytes'] / MB:,.0f} MB "
        f"= {r['dataset_bytes'] / r['store_bytes']:.1f}x one object store of "
        f"{r['store_bytes'] / MB:.0f} MB; {r['nodes']} one-CPU nodes; uploaded in "
        f"{r['upload_s']:.0f} s; task {r['state']} in {r['train_s']:.0f} s "
        + (f"({r['error']})" if r["error"] else ""),
        "epochs: "
        + "; ".join(
            f"{e['epoch']}: loss {e['train_loss']:.3f}, acc {e['accuracy']:.1f} %"
            for e in r["epochs"]
            if e["accuracy"] is not None
        ),
        f"server RSS: started {r['rss_started']['server_rss'] / MB:.0f} MB, idle (after the "
        f"upload) {idle['server_rss'] / MB:.0f} MB, upload peak "
        f"{r['peak_upload']['server_rss'] / MB:.0f} MB, training peak "
        f"{peak['server_rss'] / MB:.0f} MB (anon {peak.get('server_anon', 0) / MB:.0f}, shmem "
        f"{peak.get('server_shmem', 0) / MB:.0f}) -> peak - idle "
        f"{r['server_peak_growth_bytes'] / MB:.0f} MB (target < 300 MB: "
        f"{'met' if r['met'] else 'NOT met'})",
        "head: "
        + ", ".join(
            f"{k} idle {idle.get(k, 0) / MB:.0f} MB, peak {v / MB:.0f} MB"
            for k, v in peak.items()
            if k.startswith("head_")
        )
        + f"; spilled at the end {r['spilled_bytes_at_end'] / MB:.0f} MB",
    ]
    return "\n".join(lines)


QUICK = {"memory": {"store_mb": 96, "train_mb": 420, "epochs": 1},
         "network": {"train_mb": 64, "epochs": 2}}  # fmt: skip
DEFAULTS = {"memory": {"store_mb": 512, "train_mb": 2200, "epochs": 1},
            "network": {"store_mb": 512, "train_mb": 256, "epochs": 3}}  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    from benchmarks.netlab import PROFILES

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", choices=["memory", "network"], required=True)
    parser.add_argument("--nodes", type=int, default=4, help="one-CPU Ray nodes, and N")
    parser.add_argument("--store-mb", type=int, help="each node's object store, MiB (512)")
    parser.add_argument("--train-mb", type=float, help="the train split's features, MB")
    parser.add_argument("--epochs", type=int, help="memory 1, network 3")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--profile", choices=list(PROFILES), default="100mbit")
    parser.add_argument("--cap-s", type=float, default=3600.0, help="the task's longest wait")
    parser.add_argument("--quick", action="store_true", help="small: see above")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/)")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    for name in ("--address", "--home", "--data"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = DEFAULTS[args.part] | (QUICK[args.part] if args.quick else {})
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.drive:
        from benchmarks.data_cluster_net import drive

        drive(args)
        return 0
    from benchmarks.netlab import unavailable

    if args.part == "network" and (reason := unavailable()):
        print(f"no emulated network here: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear down on the way out
    os.chdir(ROOT)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"data-{args.part}-{stamp}.json"
    if args.part == "memory":
        result = memory(args)
        text = memory_lines(result)
    else:
        from benchmarks.data_cluster_net import network, network_lines

        result = network(args)
        text = network_lines(result)
    load = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {"args": vars(args) | {"out": str(out)}, "result": result, "load_average": load}
    out.write_text(json.dumps(saved, indent=1, default=str))
    print(f"{text}\nload average at the end {load}; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
