"""What `python -m benchmarks.cluster` runs inside the emulated cluster's namespaces.

    python -m benchmarks.cluster_rows kubeml --address IP:6379 --nodes N --data DIR --home DIR ...
    python -m benchmarks.cluster_rows ddp --rank R --world N --master IP --data DIR ...

`kubeml` is the control plane's node: a kubeml server on the Ray backend (started as the
CLI starts one, joined to the lab's Ray cluster), the function and the data uploaded, the
workers warmed by a throw-away task, then one timed task of a single epoch. `ddp` is one
rank of DDP with local SGD over gloo. Each prints one JSON line: its round marks, every
mark with the time and the lab's link counters at that moment (`--links node=netns ...`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.netlab import Node, read_counters
from benchmarks.reference import ROOT, free_port

FUNCTION_FILE = ROOT / "benchmarks" / "functions" / "mlp_wide_fashion.py"
FUNCTION, DATASET = "widemlp", "fashion"


def _links(lab: str) -> dict[str, dict[str, int]]:
    """Every link's counters now; `lab`: the JSON of the lab's nodes (`--lab`)."""
    if not lab:
        return {}
    nodes = {name: Node(**fields) for name, fields in json.loads(lab).items()}
    return {name: read_counters(node).as_dict() for name, node in nodes.items()}


def _request(args: argparse.Namespace, k: int, **extra: Any) -> dict[str, Any]:
    return dict(
        function=FUNCTION, dataset=DATASET, epochs=1, parallelism=args.nodes, k=k,
        batch_size=args.batch, lr=args.lr, static=True, validate_every=0, seed=args.seed,
        **extra,
    )  # fmt: skip


def kubeml_row(args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of K-AVG through a kubeml server on the lab's Ray; marks at every round."""
    from benchmarks.rows_kubeml import warm_up_task
    from kubeml.client import Client
    from kubeml.client.local_server import ensure_server, stop_server
    from kubeml.settings import Settings

    data = Path(args.data)
    settings = Settings(
        home=Path(args.home), port=free_port(), backend="ray", ray_address=args.address,
        capacity=args.nodes, round_timeout_s=900, auto_resume=False,
    )  # fmt: skip
    client = Client(ensure_server(settings, quiet=True), settings=settings)
    try:
        client.create_function(FUNCTION, FUNCTION_FILE.read_text())
        client.create_dataset(
            DATASET, *(data / f"{part}.npy" for part in ("train_x", "train_y", "test_x", "test_y"))
        )
        warm_up_task(client, _request(args, 1), timeout_s=900)  # actors warm, data on nodes
        marks: list[dict[str, Any]] = [{"round": -1, "t": time.time(), "links": _links(args.lab)}]
        task_id = client.train(**_request(args, args.k))
        seen = None
        while True:
            info = client.get_task(task_id)
            if (info.epoch, info.round) != seen:
                seen = (info.epoch, info.round)
                marks.append(
                    {"epoch": info.epoch, "round": info.round, "t": time.time(),
                     "links": _links(args.lab)}
                )  # fmt: skip
            if info.state.finished:
                break
            time.sleep(0.02)
        progress = client.progress(task_id)
        history = client.get_history(task_id).epochs
        return {
            "state": info.state.value,
            "error": info.error,
            "marks": marks,
            "round_points": [p.model_dump(mode="json") for p in progress.rounds],
            "history": [e.model_dump(mode="json") for e in history],
        }
    finally:
        client.close()
        stop_server(settings)


def ddp_row(args: argparse.Namespace) -> dict[str, Any]:
    """DDP with PyTorch's local SGD (no gradient all-reduce; the parameters averaged every
    K steps, as `benchmarks/rows_torch.py` does), one rank; rank 0 marks every round."""
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import (
        PostLocalSGDState,
        post_localSGD_hook,
    )
    from torch.distributed.algorithms.model_averaging.utils import average_parameters
    from torch.nn.parallel import DistributedDataParallel

    from benchmarks.reference import Split, build_model, even_slice, make_optimizer

    torch.set_num_threads(1)  # one-CPU nodes, as the kubeml functions
    dist.init_process_group(
        "gloo", init_method=f"tcp://{args.master}:29500", rank=args.rank, world_size=args.nodes
    )
    model = build_model(args.seed, FUNCTION_FILE)
    ddp = DistributedDataParallel(model)  # broadcasts rank 0's weights
    ddp.register_comm_hook(
        PostLocalSGDState(None, None, start_localSGD_iter=0, post_local_gradient_allreduce=False),
        post_localSGD_hook,
    )
    optimizer = make_optimizer(model, args.lr, FUNCTION_FILE)
    data = np.load(Path(args.data) / "train_x.npy"), np.load(Path(args.data) / "train_y.npy")
    first, stop = even_slice(len(data[0]), args.nodes, args.rank)
    split = Split(data[0][first:stop], data[1][first:stop], FUNCTION_FILE)
    order = np.random.default_rng([args.seed, args.rank]).permutation(len(split))
    marks: list[dict[str, Any]] = []
    mark = args.rank == 0 and args.lab

    def note(**fields: Any) -> None:
        if mark:
            marks.append({"t": time.time(), "links": _links(args.lab), **fields})

    dist.barrier()
    note(round=0)
    steps = len(order) // args.batch
    for step in range(steps):
        x, y = split.batch(order[step * args.batch : (step + 1) * args.batch])
        optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        if (step + 1) % args.k == 0:
            started = time.perf_counter()
            average_parameters(iter(model.parameters()), dist.group.WORLD)
            note(round=(step + 1) // args.k, sync_s=time.perf_counter() - started)
    dist.destroy_process_group()
    return {"state": "succeeded", "marks": marks, "steps": steps}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_rows")
    parser.add_argument("row", choices=["kubeml", "ddp"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--nodes", type=int, required=True, help="N: functions or ranks")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lab", default="", help="the lab's nodes as JSON, to count links")
    parser.add_argument("--address", help="kubeml: the Ray head's address")
    parser.add_argument("--home", help="kubeml: the server's home")
    parser.add_argument("--rank", type=int, default=0, help="ddp: this process's rank")
    parser.add_argument("--master", help="ddp: rank 0's address")
    args = parser.parse_args(argv)
    result = kubeml_row(args) if args.row == "kubeml" else ddp_row(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
