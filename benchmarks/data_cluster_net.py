"""Part 2 of `python -m benchmarks.data_cluster`: the control plane's link, per epoch.

A lab (`benchmarks/netlab.py`, `benchmarks/netlab_ray.py`) of `cp` (the Ray head, no CPUs,
and the kubeml server) and `--nodes` one-CPU Ray nodes; `drive` runs in cp's namespace,
where a read of `/sys/class/net` is cp's own link (`cluster_growth._cp_bytes`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.data_cluster import (
    LINK_TARGET,
    MB,
    TEST_SIZE,
    _history,
    _request,
    _settings,
    _upload,
    dataset_bytes,
    samples_for,
    write_tiles,
)
from benchmarks.netlab import NODE_DEVICE
from benchmarks.reference import ROOT


def _cp_tx() -> int:
    """What cp sent (`_cp_bytes` is both ways)."""
    return int(Path(f"/sys/class/net/{NODE_DEVICE}/statistics/tx_bytes").read_text())


def drive(args: argparse.Namespace) -> None:
    """On cp: a server on the lab's Ray, the upload, the task; one JSON line of marks."""
    from benchmarks.cluster_growth import _cp_bytes
    from benchmarks.data import FIELDS
    from kubeml.client import Client
    from kubeml.client.local_server import ensure_server, stop_server

    settings = _settings(Path(args.home), args.address, args.nodes, args.train_mb)
    client = Client(ensure_server(settings, quiet=True), settings=settings)
    result: dict[str, Any] = {}
    try:
        before = _cp_bytes()
        result["upload_s"] = _upload(client, [Path(args.data) / f"{f}.npy" for f in FIELDS])
        result["upload_cp_bytes"] = _cp_bytes() - before  # client and server share cp
        marks = [{"epoch": 0, "t": time.time(), "cp_bytes": _cp_bytes(), "cp_tx_bytes": _cp_tx()}]
        task_id = client.train(**_request(args))
        while True:
            info = client.get_task(task_id)
            # The history grows when an epoch ends, validated; `info.epoch` already counts
            # the epoch in progress from its first round on.
            done = len(client.get_history(task_id).epochs)
            if done != marks[-1]["epoch"]:
                marks.append({"epoch": done, "t": time.time(), "cp_bytes": _cp_bytes(),
                              "cp_tx_bytes": _cp_tx()})  # fmt: skip
            if info.state.finished:
                break
            time.sleep(0.05)
        result.update(state=info.state.value, error=info.error, marks=marks,
                      epochs=_history(client, task_id))  # fmt: skip
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
        stop_server(settings)
    print(json.dumps(result), flush=True)


def network(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.cluster import _lines
    from benchmarks.netlab import Netlab
    from benchmarks.netlab_ray import RayOnLab

    train_size = samples_for(args.train_mb)
    nodes = ["cp", *(f"w{i + 1}" for i in range(args.nodes))]
    with tempfile.TemporaryDirectory(prefix="kubeml-bench-data-") as tmp:
        write_tiles(Path(tmp), train_size, TEST_SIZE)
        with Netlab(nodes, profile=args.profile) as lab:
            cluster = RayOnLab(lab, head="cp", workers=nodes[1:], object_store_mb=args.store_mb)
            cluster.start(timeout_s=300)
            argv = [
                sys.executable, "-m", "benchmarks.data_cluster", "--part", "network", "--drive",
                "--address", cluster.address, "--home", str(lab.tmp / "kubeml-home"),
                "--data", tmp, "--train-mb", str(args.train_mb), "--epochs", str(args.epochs),
                "--nodes", str(args.nodes), "--k", str(args.k), "--batch", str(args.batch),
            ]  # fmt: skip
            with open(lab.tmp / "driver.log", "w") as err:
                proc = lab.popen("cp", argv, env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=err, text=True)  # fmt: skip
                found = _lines(proc, args.cap_s + 600)
            if proc.returncode or not found:
                tail = lab.log("driver.log")[-3000:]
                found = [{"error": f"the driver exited {proc.returncode}: {tail}"}]
    result = found[-1]
    total = dataset_bytes(train_size, TEST_SIZE)
    marks = result.get("marks", [])
    per_epoch = [
        {"epoch": b["epoch"], "seconds": b["t"] - a["t"], "cp_bytes": b["cp_bytes"] - a["cp_bytes"],
         "cp_tx_bytes": b["cp_tx_bytes"] - a["cp_tx_bytes"],
         "fraction": (b["cp_bytes"] - a["cp_bytes"]) / total}
        for a, b in itertools.pairwise(marks)
    ]  # fmt: skip
    later = [e["fraction"] for e in per_epoch[1:]]
    return result | {
        "train_size": train_size, "test_size": TEST_SIZE, "dataset_bytes": total,
        "profile": args.profile, "per_epoch": per_epoch, "target": "<= 5% from epoch 2",
        "met": bool(later) and max(later) <= LINK_TARGET,
    }  # fmt: skip


def network_lines(r: dict[str, Any]) -> str:
    lines = [
        f"tiles: {r['train_size']:,} train samples, {r['dataset_bytes'] / MB:,.0f} MB; "
        f"{r['profile']} links; task {r.get('state')}"
        + (f" ({r['error']})" if r.get("error") else "")
    ]
    for e in r["per_epoch"]:
        lines.append(
            f"epoch {e['epoch']}: {e['seconds']:.0f} s, cp link {e['cp_bytes'] / MB:,.1f} MB "
            f"= {e['fraction']:.2%} of the dataset (cp sent {e['cp_tx_bytes'] / MB:,.1f} MB)"
        )
    lines.append(f"from the second epoch at most 5 %: {'met' if r['met'] else 'NOT met'}")
    return "\n".join(lines)
