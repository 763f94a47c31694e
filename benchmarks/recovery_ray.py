"""The Ray Train side of the recovery row: `FailureConfig(max_failures=1)`, a checkpoint
at every epoch end, and one of 2 workers SIGKILLed half-way through the middle epoch.

Ray Train restarts the whole worker group from the last checkpoint, so the work redone
is what both workers trained since that epoch began.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.records import Workload
from benchmarks.reference import ROOT


def _loop(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker; resumes from the last checkpoint when restarted."""
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint, get_checkpoint, get_context, report
    from ray.train.torch import prepare_model

    from benchmarks import reference as ref
    from benchmarks.data import Arrays

    raw = dict(config["workload"])
    workload = Workload(**{**raw, "data_dir": Path(raw["data_dir"])})
    scratch = Path(config["scratch"])
    context = get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, workload.threads // world))
    (scratch / f"pid-{rank}").write_text(str(os.getpid()))
    model = prepare_model(ref.build_model(workload.seed))
    optimizer = ref.make_optimizer(model, workload.lr)
    network = getattr(model, "module", model)
    start = 0
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    arrays = Arrays.load(workload.data_dir)
    train, test = ref.Split(arrays.train_x, arrays.train_y), ref.Split(arrays.test_x, arrays.test_y)
    steps = [0]

    def after_step() -> None:
        steps[0] += 1
        if rank == 0 and steps[0] % 10 == 0:
            (scratch / "progress").write_text(json.dumps([epoch, steps[0]]))

    for epoch in range(start, workload.epochs):
        steps[0] = 0
        order = ref.epoch_order(len(train), workload.seed, epoch)
        a, b = ref.even_slice(len(order), world, rank)
        ref.train_steps(model, optimizer, train, order[a:b], workload.batch_size, after_step)
        a, b = ref.even_slice(len(test), world, rank)
        correct, count = ref.evaluate(network, test, a, b, workload.batch_size)
        sums = torch.tensor([correct, count], dtype=torch.float64)
        dist.all_reduce(sums)
        metrics = {"epoch": epoch + 1, "accuracy": 100.0 * float(sums[0] / sums[1])}
        if rank == 0:
            folder = Path(tempfile.mkdtemp(dir=scratch))
            state = {
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
            }
            torch.save(state, folder / "state.pt")
            report(metrics, checkpoint=Checkpoint.from_directory(str(folder)))
        else:
            report(metrics)


def _killer(scratch: Path, epoch: int, steps: int, done: threading.Event, out: dict) -> None:
    while not done.wait(0.01):
        try:
            at_epoch, at_step = json.loads((scratch / "progress").read_text())
        except (OSError, ValueError):
            continue
        if at_epoch == epoch and at_step >= steps:
            os.kill(int((scratch / "pid-1").read_text()), signal.SIGKILL)
            out["killed_at_step"] = at_step
            return


def run_ray_recovery(workload: Workload, repeat: int) -> dict[str, Any]:
    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        return {"skipped": "ray is not installed: pip install 'ray[train]==2.60.0'"}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(
        address="local",
        num_cpus=workload.threads,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    steps_per_epoch = -(-workload.train_size // 2 // workload.batch_size)
    kill_epoch = workload.epochs // 2  # counted from 0: the middle epoch
    pairs = []
    try:
        for _ in range(repeat):
            runs = {}
            for kill in (False, True):
                scratch = Path(tempfile.mkdtemp(prefix="kubeml-bench-ray-recovery-"))
                done, killed = threading.Event(), {}
                killer = threading.Thread(
                    target=_killer,
                    args=(scratch, kill_epoch, steps_per_epoch // 2, done, killed),
                )
                trainer = TorchTrainer(
                    _loop,
                    train_loop_config={
                        "workload": asdict(replace(workload, data_dir=str(workload.data_dir))),  # type: ignore[arg-type]
                        "scratch": str(scratch),
                    },
                    scaling_config=ScalingConfig(
                        num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}
                    ),
                    run_config=RunConfig(
                        name="kubeml-recovery",
                        storage_path=str(scratch / "runs"),
                        failure_config=FailureConfig(max_failures=1),
                    ),
                )
                started = time.monotonic()
                if kill:
                    killer.start()
                result = trainer.fit()
                done.set()
                wall = time.monotonic() - started
                runs[kill] = {"wall_s": wall, "accuracy": result.metrics["accuracy"], **killed}
                shutil.rmtree(scratch, ignore_errors=True)
            redone = runs[True].get("killed_at_step", 0) * workload.batch_size * 2
            pairs.append(
                {
                    "extra_wall_s": runs[True]["wall_s"] - runs[False]["wall_s"],
                    "redone_samples": redone,
                    "baseline": runs[False],
                    "killed": runs[True],
                }
            )
    finally:
        ray.shutdown()
    import statistics

    return {
        "median_extra_wall_s": statistics.median(p["extra_wall_s"] for p in pairs),
        "median_redone_samples": statistics.median(p["redone_samples"] for p in pairs),
        "median_accuracy_baseline": statistics.median(p["baseline"]["accuracy"] for p in pairs),
        "median_accuracy_killed": statistics.median(p["killed"]["accuracy"] for p in pairs),
        "pairs": pairs,
    }
