"""What `python -m benchmarks.cluster` runs inside the emulated cluster's namespaces.

    python -m benchmarks.cluster_rows kubeml --address IP:6379 --home DIR --runs JSON ...
    python -m benchmarks.cluster_rows peer --mode ddp|local-sgd --rank R --master IP ...
    python -m benchmarks.cluster_rows ray-train --address IP:6379 --result FILE ...

`kubeml` runs on the control plane's node: a kubeml server on the Ray backend (started as
the CLI starts one, joined to the lab's Ray cluster), the function and the data uploaded,
then for each row of `--runs` a throw-away task that warms the workers and one task per
seed, each polled as `kubeml train --watch` polls, until its epoch record reaches the goal
(or the cap). `peer` is one gloo rank: DDP (gradient all-reduce every step) or DDP with
local SGD (parameters averaged every K steps). `ray-train` drives a Ray Train TorchTrainer
whose workers run the same local-SGD loop. Each prints one JSON line per run: its round
marks (time and every link's counters when the round was first seen done), its epochs'
accuracies and the seconds from its start (`--started`, or the submit) to the goal.
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
POLL_S = 0.02


def links(lab: str) -> dict[str, dict[str, int]]:
    """Every link's counters now; `lab`: the JSON of the lab's nodes (`--lab`)."""
    if not lab:
        return {}
    nodes = {name: Node(**fields) for name, fields in json.loads(lab).items()}
    return {name: read_counters(node).as_dict() for name, node in nodes.items()}


def _request(args: argparse.Namespace, seed: int, **fields: Any) -> dict[str, Any]:
    request = dict(
        function=FUNCTION, dataset=DATASET, epochs=args.epochs, parallelism=args.nodes,
        k=args.k, batch_size=args.batch, lr=args.lr, static=True, validate_every=1,
        goal_accuracy=args.goal, seed=seed, checkpoint_every_s=args.checkpoint_every_s,
    )  # fmt: skip
    return request | fields


# -- kubeml ---------------------------------------------------------------------------------
def kubeml_rows(args: argparse.Namespace) -> None:
    """Every run of `--runs` on one warm server; one JSON line per run (an error is a line)."""
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
        for run in json.loads(args.runs):
            try:  # the workers warm, the data on the nodes, a row's own services started
                warm = _request(args, 0, **run["fields"]) | {
                    "k": 1, "epochs": 1, "validate_every": 0, "goal_accuracy": 100.0,
                }  # fmt: skip
                warm_up_task(client, warm, timeout_s=900)
                for seed in run["seeds"]:
                    _emit(_kubeml_run(client, args, run, seed))
            except Exception as exc:  # the next row may still run: say why this one did not
                _emit({"row": run["row"], "error": f"{type(exc).__name__}: {exc}"})
    finally:
        client.close()
        stop_server(settings)


def _kubeml_run(client: Any, args: argparse.Namespace, run: dict, seed: int) -> dict[str, Any]:
    """One task from its submit: a mark whenever the round or the accuracy moves."""
    marks: list[dict[str, Any]] = [{"epoch": 0, "round": 0, "t": time.time(),
                                    "links": links(args.lab)}]  # fmt: skip
    started = time.time()
    task_id = client.train(**_request(args, seed, **run["fields"]))
    seen, goal_s, stopping = None, None, False
    while True:
        info = client.get_task(task_id)
        now = time.time()
        if (info.epoch, info.round, info.accuracy) != seen:
            seen = (info.epoch, info.round, info.accuracy)
            marks.append({"epoch": info.epoch, "round": info.round, "t": now,
                          "accuracy": info.accuracy, "links": links(args.lab)})  # fmt: skip
        if goal_s is None and info.accuracy is not None and info.accuracy >= args.goal:
            goal_s = now - started
        if info.state.finished:
            break
        if now - started > args.cap_s and not stopping:
            client.stop_task(task_id)  # at the next round boundary
            stopping = True
        time.sleep(POLL_S)
    history = client.get_history(task_id).epochs
    phases = [x.message for x in client.logs(task_id) if "a function's round, mean" in x.message]
    return {
        "row": run["row"], "seed": seed, "task": task_id, "state": info.state.value,
        "error": info.error, "started": started, "goal_s": goal_s,
        "capped": goal_s is None and stopping, "marks": marks,
        "epochs": [{"epoch": e.epoch, "accuracy": e.accuracy, "train_loss": e.train_loss,
                    "rounds": e.rounds} for e in history],
        "round_phases": phases,  # the task log's line per epoch: where a function's round went
    }  # fmt: skip


def _emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


# -- peers ----------------------------------------------------------------------------------
def train_peer(args: argparse.Namespace, rank: int, world: int, every_step: bool) -> dict:
    """DDP over the process group already set up: gradients all-reduced every step
    (`every_step`), or PyTorch's local SGD (no gradient all-reduce; the parameters averaged
    every K steps, as `benchmarks/rows_torch.py` does). Each epoch ends with validation on
    the test cut (each rank a slice, the counts all-reduced), stopped by all ranks at once
    at the goal or past the cap. Rank 0 marks every K steps; the result is rank 0's."""
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

    from benchmarks.reference import Split, build_model, evaluate, even_slice, make_optimizer

    torch.set_num_threads(1)  # one-CPU nodes, as the kubeml functions
    model = build_model(args.seed, FUNCTION_FILE)
    ddp = DistributedDataParallel(model)  # broadcasts rank 0's weights
    if not every_step:
        state = PostLocalSGDState(None, None, start_localSGD_iter=0,
                                  post_local_gradient_allreduce=False)  # fmt: skip
        ddp.register_comm_hook(state, post_localSGD_hook)
    optimizer = make_optimizer(model, args.lr, FUNCTION_FILE)
    data = Path(args.data)
    train_x, train_y = np.load(data / "train_x.npy"), np.load(data / "train_y.npy")
    first, stop = even_slice(len(train_x), world, rank)
    split = Split(train_x[first:stop], train_y[first:stop], FUNCTION_FILE)
    test_x, test_y = np.load(data / "test_x.npy"), np.load(data / "test_y.npy")
    test = Split(test_x, test_y, FUNCTION_FILE)
    test_slice = even_slice(len(test_x), world, rank)
    marks: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []

    def note(**fields: Any) -> None:
        if rank == 0 and args.lab:
            marks.append({"t": time.time(), "links": links(args.lab), **fields})

    dist.barrier()
    note(epoch=0, round=0)
    goal_s, capped, steps = None, False, len(split) // args.batch
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, rank, epoch]).permutation(len(split))
        ddp.train()
        for step in range(steps):
            x, y = split.batch(order[step * args.batch : (step + 1) * args.batch])
            optimizer.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()
            last = step + 1 == steps
            if (step + 1) % args.k == 0 or last:
                started = time.perf_counter()
                if not every_step:
                    average_parameters(iter(model.parameters()), dist.group.WORLD)
                sync = {} if every_step else {"sync_s": time.perf_counter() - started}
                note(epoch=epoch, round=-(-(step + 1) // args.k), **sync)
        correct, count = evaluate(model, test, *test_slice, 256)
        elapsed = time.time() - args.started
        totals = torch.tensor([correct, count, float(elapsed > args.cap_s)], dtype=torch.float64)
        dist.all_reduce(totals)
        accuracy = float(totals[0] / totals[1] * 100)
        epochs.append({"epoch": epoch + 1, "accuracy": accuracy, "elapsed_s": elapsed})
        note(epoch=epoch + 1, round=0, accuracy=accuracy)
        if accuracy >= args.goal:
            goal_s = elapsed
            break
        if totals[2] > 0:  # any rank past the cap: all stop together
            capped = True
            break
    return {"state": "succeeded", "marks": marks, "epochs": epochs, "goal_s": goal_s,
            "capped": capped, "started": args.started, "seed": args.seed}  # fmt: skip


def peer_row(args: argparse.Namespace) -> dict[str, Any]:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://{args.master}:29500", rank=args.rank, world_size=args.nodes
    )
    try:
        result = train_peer(args, args.rank, args.nodes, every_step=args.mode == "ddp")
        dist.barrier()  # no rank tears gloo down while another is still in a collective
        return result
    finally:
        dist.destroy_process_group()


def _ray_train_loop(config: dict[str, Any]) -> None:
    import ray.train

    context = ray.train.get_context()
    args = argparse.Namespace(**config)
    result = train_peer(args, context.get_world_rank(), context.get_world_size(), False)
    if context.get_world_rank() == 0:
        Path(args.result).write_text(json.dumps(result))


def ray_train_row(args: argparse.Namespace) -> dict[str, Any]:
    """A TorchTrainer with one worker per worker node (1 CPU each) on the lab's Ray."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {
        "GLOO_SOCKET_IFNAME": args.gloo_ifname, "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}",
    }  # fmt: skip
    ray.init(address=args.address, log_to_driver=False, runtime_env={"env_vars": env})
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=vars(args),
        scaling_config=ScalingConfig(num_workers=args.nodes, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"local-sgd-{args.seed}", storage_path=args.storage),
    )
    trainer.fit()
    ray.shutdown()
    return json.loads(Path(args.result).read_text())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_rows")
    parser.add_argument("row", choices=["kubeml", "peer", "ray-train"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--nodes", type=int, required=True, help="N: functions or ranks")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=10, help="at most")
    parser.add_argument("--goal", type=float, default=100.0, help="test accuracy to stop at")
    parser.add_argument("--cap-s", type=float, default=600.0, help="stop a run after this")
    parser.add_argument("--started", type=float, default=0.0, help="peers: the run's start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lab", default="", help="the lab's nodes as JSON, to count links")
    parser.add_argument("--address", help="kubeml, ray-train: the Ray head's address")
    parser.add_argument("--home", help="kubeml: the server's home")
    parser.add_argument("--runs", default="[]", help="kubeml: [{row, fields, seeds}] as JSON")
    parser.add_argument("--checkpoint-every-s", type=float, default=60.0, help="kubeml")
    parser.add_argument("--mode", choices=["ddp", "local-sgd"], default="local-sgd", help="peer")
    parser.add_argument("--rank", type=int, default=0, help="peer: this process's rank")
    parser.add_argument("--master", help="peer: rank 0's address")
    parser.add_argument("--result", help="ray-train: where rank 0 writes its result")
    parser.add_argument("--storage", help="ray-train: the run's storage folder")
    parser.add_argument("--gloo-ifname", default="lab0", help="ray-train: the nodes' link")
    args = parser.parse_args(argv)
    if args.row == "kubeml":
        kubeml_rows(args)
        return 0
    result = peer_row(args) if args.row == "peer" else ray_train_row(args)
    if args.row == "ray-train" or args.rank == 0:
        _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
