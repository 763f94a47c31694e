"""Recovery: what a killed worker costs kubeml, and what a checkpoint costs.

    python -m benchmarks.recovery [--train 20000] [--test 5000] [--epochs 3] [--k 8]
                                  [--repeat 3] [--ray] [--out FILE.json]

`checkpoint`: one durable checkpoint (clone the reference, torch.save, fsync, rename) of
LeNet and of an 11M-parameter model, median of 5 — what sets `checkpoint_every_s`.
`kill`: LeNet on Fashion-MNIST, N=2, static, on one engine with warm workers; each repeat
runs the task uninterrupted, then again with one worker SIGKILLed half-way through the
middle epoch. Extra wall time is the difference of the pair; work redone is what the dead
worker had trained in its unmerged round (the time since the round began, at the
function's throughput), bounded by one round (K batches).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.data import load_fashion_mnist
from benchmarks.records import Workload
from benchmarks.rows_kubeml import deploy_reference, fresh_engine, prewarm, train_request


def checkpoint_cost(repeat: int = 5) -> dict[str, Any]:
    import torch
    from torch import nn

    from benchmarks.reference import build_model
    from kubeml.control.plan.position import Position
    from kubeml.control.records.checkpoints import Checkpoint, CheckpointStore

    models = {"lenet": build_model(0), "11M": nn.Linear(3316, 3316)}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        store = CheckpointStore(Path(home))
        position = Position.start(60_000, 2, seed=0, epoch=0)
        for name, model in models.items():
            state = model.state_dict()
            times = []
            for i in range(repeat):
                started = time.perf_counter()
                clone = {k: v.clone() for k, v in state.items()}
                store.save(name, Checkpoint(position, clone, [], sequence=i))
                times.append(time.perf_counter() - started)
            params = sum(v.numel() for v in state.values())
            size = (Path(home) / f"{name}.ckpt").stat().st_size
            out[name] = {"parameters": params, "bytes": size, "median_s": statistics.median(times)}
    torch.set_num_threads(torch.get_num_threads())
    return out


def _kill_mid_epoch(engine: Any, task_id: str, epoch: int, rounds: int, out: dict) -> None:
    """Wait for half of `epoch`'s rounds, then SIGKILL one of the task's workers half-way
    through a round (by the length of the round before)."""
    last_round, round_started, round_s = -1, time.monotonic(), 0.0
    while True:
        info = engine.get_task(task_id)
        if info.state.finished:
            return
        if info.round != last_round:
            now = time.monotonic()
            last_round, round_started, round_s = info.round, now, now - round_started
        mid_round = time.monotonic() - round_started >= round_s / 2
        if info.epoch == epoch and info.round >= rounds // 2 and mid_round:
            break
        time.sleep(0.005)
    pid = engine.backend.describe()["worker_pids"][task_id][0]
    os.kill(pid, signal.SIGKILL)
    out["killed_at_round"] = info.round
    out["since_round_start_s"] = time.monotonic() - round_started


def kill_row(workload: Workload, k: int, repeat: int) -> dict[str, Any]:
    from kubeml.api.schemas import TaskState

    pairs = []
    with fresh_engine("process", capacity=2) as engine:
        deploy_reference(engine, workload.data_dir)
        prewarm(engine, workload, 2)
        request = train_request(workload, 2, k, validate_every=0, goal_accuracy=100.0)
        per_function = workload.train_size // 2
        rounds = -(-per_function // (workload.batch_size * k))
        for _ in range(repeat):
            runs = {}
            for kill in (False, True):
                task_id = engine.train(**request)
                killed: dict[str, Any] = {}
                killer = threading.Thread(
                    target=_kill_mid_epoch,
                    args=(engine, task_id, workload.epochs // 2 + 1, rounds, killed),
                )
                if kill:
                    killer.start()
                info = engine.wait(task_id, timeout_s=3600)
                if kill:
                    killer.join()
                assert info.state is TaskState.SUCCEEDED, info.error
                history = engine.get_history(task_id).epochs
                assert info.started_at is not None and info.finished_at is not None
                runs[kill] = {
                    "wall_s": (info.finished_at - info.started_at).total_seconds(),
                    "accuracy": info.accuracy,
                    "retries": info.retries,
                    "samples_per_s": statistics.median(e.samples_per_s for e in history),
                    **killed,
                }
            base, hit = runs[False], runs[True]
            per_function_rate = base["samples_per_s"] / 2
            pairs.append(
                {
                    "extra_wall_s": hit["wall_s"] - base["wall_s"],
                    "redone_samples": min(
                        hit.get("since_round_start_s", 0.0) * per_function_rate,
                        workload.batch_size * k,
                    ),
                    "round_samples": workload.batch_size * k,
                    "baseline": base,
                    "killed": hit,
                }
            )
    return {
        "k": k,
        "epochs": workload.epochs,
        "train_size": workload.train_size,
        "median_extra_wall_s": statistics.median(p["extra_wall_s"] for p in pairs),
        "median_redone_samples": statistics.median(p["redone_samples"] for p in pairs),
        "median_accuracy_baseline": statistics.median(p["baseline"]["accuracy"] for p in pairs),
        "median_accuracy_killed": statistics.median(p["killed"]["accuracy"] for p in pairs),
        "pairs": pairs,
    }


def run_recovery(
    train: int = 20_000,
    test: int = 5_000,
    epochs: int = 3,
    k: int = 8,
    repeat: int = 3,
    ray: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """The recovery row of the harness: checkpoint cost, kubeml's kill pairs and Ray
    Train's (`FailureConfig`, checkpoint every epoch, restart) on the same workload."""
    result: dict[str, Any] = {"checkpoint": checkpoint_cost()}
    data_dir = Path(tempfile.mkdtemp(prefix="kubeml-bench-data-"))
    load_fashion_mnist(train, test).save(data_dir)
    workload = Workload(data_dir=data_dir, train_size=train, test_size=test, epochs=epochs)
    echo(f"-- recovery: kubeml, {repeat} pair(s) ...")
    result["kill"] = kill_row(workload, k, repeat)
    if ray:
        from benchmarks.recovery_ray import run_ray_recovery

        echo(f"-- recovery: Ray Train, {repeat} pair(s) ...")
        result["ray"] = run_ray_recovery(workload, repeat)
    return result


def recovery_lines(result: dict[str, Any]) -> str:
    """The side-by-side summary: extra wall time per kill, work redone, final accuracy."""
    lines = ["recovery: one of 2 workers SIGKILLed mid-epoch (medians of the pairs)"]
    rows = [("kubeml", result["kill"]), ("Ray Train", result.get("ray", {"skipped": "not run"}))]
    for name, row in rows:
        if "skipped" in row:
            lines.append(f"  {name:9s} skipped: {row['skipped']}")
            continue
        lines.append(
            f"  {name:9s} +{row['median_extra_wall_s']:.1f} s wall, "
            f"{row['median_redone_samples']:.0f} samples redone, accuracy "
            f"{row['median_accuracy_killed']:.2f}% "
            f"(uninterrupted {row['median_accuracy_baseline']:.2f}%)"
        )
    kill = result["kill"]
    lines.append(
        f"  kubeml redone / one round ({kill['pairs'][0]['round_samples']} samples): "
        f"{kill['median_redone_samples'] / kill['pairs'][0]['round_samples']:.2f} (target < 1)"
    )
    ray = result.get("ray", {})
    if "median_extra_wall_s" in ray and ray["median_extra_wall_s"] > 0:
        lines.append(
            "  extra wall time, kubeml / Ray Train: "
            f"{kill['median_extra_wall_s'] / ray['median_extra_wall_s']:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__)
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also the Ray Train row")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run_recovery(args.train, args.test, args.epochs, args.k, args.repeat, args.ray)
    text = json.dumps(result, indent=1)
    print(text)
    print(recovery_lines(result))
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
