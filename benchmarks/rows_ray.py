"""The Ray Train row: `TorchTrainer` with 2 CPU workers (DDP over gloo) on a local Ray.

Start-up counts `ray.init`, the trainer's controller and worker group, and the process
group, up to the first training step. Skipped, with the install hint, when Ray is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.records import EpochLog, RowResult, Workload
from benchmarks.reference import ROOT, build_model, make_optimizer, now


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker."""
    import torch
    import torch.distributed as dist
    from ray.train import get_context
    from ray.train.torch import prepare_model

    from benchmarks.rows_torch import distributed_epochs

    raw = dict(config["workload"])
    workload = Workload(**{**raw, "data_dir": Path(raw["data_dir"])})
    torch.set_num_threads(max(1, workload.threads // dist.get_world_size()))
    context = get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model = prepare_model(build_model(workload.seed, workload.function_file))
    optimizer = make_optimizer(model, workload.lr, workload.function_file)
    started, logs = distributed_epochs(model, optimizer, workload, rank, world)
    if rank == 0:
        Path(config["out"]).write_text(
            json.dumps({"started": started, "epochs": [asdict(e) for e in logs]})
        )


def run_ray(workload: Workload, workers: int = 2) -> RowResult:
    name = f"Ray Train {workers} workers"
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        return RowResult(
            name=name,
            framework="ray",
            parallelism=workers,
            skipped="ray is not installed: pip install 'ray[train]==2.60.0'",
        )
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    scratch = Path(tempfile.mkdtemp(prefix="kubeml-bench-ray-"))
    out = scratch / "result.json"
    row_start = now()
    ray.init(  # "local": never join a cluster someone else started on this machine
        address="local",
        num_cpus=workload.threads,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "workload": asdict(replace(workload, data_dir=str(workload.data_dir))),  # type: ignore[arg-type]
                "out": str(out),
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            run_config=RunConfig(name="kubeml-bench", storage_path=str(scratch / "runs")),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    try:
        raw = json.loads(out.read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return RowResult(
        name=name,
        framework="ray",
        parallelism=workers,
        startup_s=raw["started"] - row_start,
        epochs=[EpochLog(**e) for e in raw["epochs"]],
        wall_s=now() - row_start,
        goal_accuracy=workload.goal_accuracy,
        notes="wall_s includes ray.shutdown",
    )
