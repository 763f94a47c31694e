"""The invocations a job sends: what one function is asked to do, with what."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from kubeml.control.job.resize import warmup_steps
from kubeml.control.plan.chunks import shard_of
from kubeml.control.plan.position import Position
from kubeml.runtime.invocation import Invocation, Mode
from kubeml.runtime.sync import heartbeat_every

if TYPE_CHECKING:
    from kubeml.control.job.loop import TrainJob


def plain_invocation(job: TrainJob, mode: Mode, parallelism: int, threads: int) -> Invocation:
    """An invocation of `job` in `mode` (init, validation; a train one's base)."""
    req = job.request
    return Invocation(
        mode=mode,
        task_id=job.task_id,
        function=job.function,
        dataset=req.dataset,
        parallelism=parallelism,
        k=req.k,
        lr=job.state.lr,
        batch_size=req.batch_size,
        epoch=job.state.epoch,
        seed=req.seed,
        optimizer_state=req.optimizer_state.value,
        chunk_samples=job.chunk_samples,
        threads=threads,
        heartbeat_s=heartbeat_every(job.services.round_timeout_s),
        memory_mb=req.memory_mb or 0,
    )


def train_invocation(
    job: TrainJob,
    position: Position,
    func_id: int,
    threads: int,
    lr_from: float | None,
    restore: bool = False,
    ramp_done: int = 0,
) -> Invocation:
    """A train invocation of `func_id`'s remaining lane; the lr ramps up from `lr_from`
    when the segment is the first after a change of the lr; `restore`: the function
    loads the optimizer state kept for this round (a replay, a resume)."""
    lane = position.lanes[func_id]
    ranges, order = shard_of(lane.remaining)
    base = plain_invocation(job, Mode.TRAIN, position.parallelism, threads)
    base = replace(base, restore_state=restore, first_batch=lane.done // job.request.batch_size)
    if lr_from is not None:
        longest = max(len(other.order) for other in position.lanes)
        steps = warmup_steps(job.request.k, -(-longest // job.request.batch_size))
        base = replace(
            base, lr_warmup_from=lr_from, lr_warmup_steps=steps, lr_warmup_offset=ramp_done
        )
    slices = job.state.score_slices
    overlap = job.request.overlap and job.services.models.remote_merge(job.task_id) is not None
    return replace(
        base,
        func_id=func_id,
        ranges=ranges,
        order=order,
        round=position.round,
        validate_ranges=slices[func_id] if func_id < len(slices) else (),
        rebuild_init=position.epoch == 0 and position.round == 0,
        overlap=overlap,
    )
