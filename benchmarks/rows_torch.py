"""Baseline rows without kubeml: a plain loop, torch DDP, and DDP with PyTorch's local SGD.

Every row runs in freshly spawned processes (nothing inherited from the harness), loads
the same `.npy` files, and trains the network of the workload's function file with that
file's optimizer and normalisation, the same batch size and the same per-epoch shuffling
as the kubeml function (see `benchmarks.reference`). Distributed rows split each epoch's
permutation into contiguous halves (one per rank) and each rank scores a slice of
the test set, as kubeml's N functions do.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

from benchmarks.records import EpochLog, RowResult, Workload
from benchmarks.reference import (
    Split,
    build_model,
    epoch_order,
    evaluate,
    even_slice,
    free_port,
    make_optimizer,
    now,
    train_steps,
)

_TIMEOUT_S = 3600.0


def distributed_epochs(
    model: Any,
    optimizer: Any,
    workload: Workload,
    rank: int,
    world: int,
    *,
    after_step: Callable[[], None] | None = None,
    before_eval: Callable[[], None] | None = None,
) -> tuple[float, list[EpochLog]]:
    """The training loop of a rank of a `torch.distributed` group (also used by Ray).

    Returns (training start time, epoch logs); every rank gets the same, all-reduced logs.
    """
    import torch
    import torch.distributed as dist

    from benchmarks.data import Arrays

    arrays = Arrays.load(workload.data_dir)
    fn = workload.function_file
    train, test = Split(arrays.train_x, arrays.train_y, fn), Split(arrays.test_x, arrays.test_y, fn)
    network = getattr(model, "module", model)
    dist.barrier()
    started = now()
    logs: list[EpochLog] = []
    for epoch in range(workload.epochs):
        order = epoch_order(len(train), workload.seed, epoch)
        a, b = even_slice(len(order), world, rank)
        t = now()
        samples, loss = train_steps(
            model, optimizer, train, order[a:b], workload.batch_size, after_step
        )
        train_s = now() - t
        if before_eval is not None:
            before_eval()
        a, b = even_slice(len(test), world, rank)
        correct, count = evaluate(network, test, a, b, workload.batch_size)
        sums = torch.tensor([correct, count, samples, loss * samples], dtype=torch.float64)
        dist.all_reduce(sums)
        slowest = torch.tensor([train_s], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        accuracy = 100.0 * float(sums[0] / sums[1])
        logs.append(
            EpochLog(
                epoch + 1,
                float(slowest[0]),
                int(sums[2]),
                float(sums[3] / sums[2]),
                accuracy,
                now() - started,
            )
        )
        if accuracy >= workload.goal_accuracy:
            break
    return started, logs


def _plain_main(workload: Workload, threads: int, queue: Any) -> None:
    import torch

    from benchmarks.data import Arrays

    torch.set_num_threads(threads)
    arrays = Arrays.load(workload.data_dir)
    fn = workload.function_file
    train, test = Split(arrays.train_x, arrays.train_y, fn), Split(arrays.test_x, arrays.test_y, fn)
    model = build_model(workload.seed, workload.function_file)
    optimizer = make_optimizer(model, workload.lr, workload.function_file)
    started = now()
    logs = []
    for epoch in range(workload.epochs):
        order = epoch_order(len(train), workload.seed, epoch)
        t = now()
        samples, loss = train_steps(model, optimizer, train, order, workload.batch_size)
        train_s = now() - t
        correct, count = evaluate(model, test, 0, len(test), workload.batch_size)
        logs.append(
            EpochLog(epoch + 1, train_s, samples, loss, 100.0 * correct / count, now() - started)
        )
        if logs[-1].accuracy >= workload.goal_accuracy:
            break
    queue.put((0, started, logs))


def _ddp_main(
    rank: int, world: int, port: int, workload: Workload, k: int | None, queue: Any
) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(max(1, workload.threads // world))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = DistributedDataParallel(build_model(workload.seed, workload.function_file))
        optimizer = make_optimizer(model, workload.lr, workload.function_file)
        after_step = before_eval = None
        if k is not None:
            after_step, before_eval = _local_sgd(model, k)
        started, logs = distributed_epochs(
            model, optimizer, workload, rank, world, after_step=after_step, before_eval=before_eval
        )
        if rank == 0:
            queue.put((rank, started, logs))
        dist.barrier()  # no rank tears gloo down while another is still in a collective
    finally:
        dist.destroy_process_group()


def _local_sgd(model: Any, k: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """PyTorch's own local SGD: no gradient all-reduce, parameters averaged every `k` steps.

    `PostLocalSGDState(start_localSGD_iter=0, post_local_gradient_allreduce=False)` turns
    DDP's gradient all-reduce off from the first step; `PeriodicModelAverager` averages the
    parameters every `k` steps. Before evaluating, the ranks average once more so they
    score one model, as kubeml's merge at the end of an epoch does.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import (
        PostLocalSGDState,
        post_localSGD_hook,
    )
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
    from torch.distributed.algorithms.model_averaging.utils import average_parameters

    state = PostLocalSGDState(
        process_group=None,
        subgroup=None,
        start_localSGD_iter=0,
        post_local_gradient_allreduce=False,
    )
    model.register_comm_hook(state, post_localSGD_hook)
    averager = PeriodicModelAverager(period=k, warmup_steps=0)
    import torch.distributed as dist

    def after_step() -> None:
        averager.average_parameters(model.parameters())

    def before_eval() -> None:
        world = dist.group.WORLD
        assert world is not None
        average_parameters(iter(model.parameters()), world)

    return after_step, before_eval


def _collect(processes: list[Any], queue: Any) -> tuple[float, list[EpochLog], str]:
    """Rank 0's (start, logs), and a note if a process died after reporting them (gloo
    has been seen to abort in teardown); a process that dies before reporting fails."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            _, started, logs = queue.get(timeout=1.0)
            break
        except Empty:
            crashed = any(p.exitcode for p in processes) or all(not p.is_alive() for p in processes)
            if crashed or time.monotonic() > deadline:
                for process in processes:
                    process.kill()
                codes = [p.exitcode for p in processes]
                raise RuntimeError(
                    f"no result from the benchmark processes (exit codes {codes})"
                ) from None
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    codes = [p.exitcode for p in processes if p.exitcode]
    note = f"a process exited with {codes} after reporting its results" if codes else ""
    return started, logs, note


def run_plain(workload: Workload, threads: int | None = None) -> RowResult:
    """A plain PyTorch loop in one process, with all the threads (torch's default here)
    or `threads` (1 is far faster on a busy machine: no OpenMP barrier per operator)."""
    threads = threads or workload.threads
    ctx = mp.get_context("spawn")
    row_start = now()
    queue = ctx.Queue()
    process = ctx.Process(target=_plain_main, args=(workload, threads, queue))
    process.start()
    started, logs, note = _collect([process], queue)
    return RowResult(
        name=f"pytorch loop ({threads} thread{'s' if threads > 1 else ''})",
        framework="pytorch",
        parallelism=1,
        startup_s=started - row_start,
        epochs=logs,
        wall_s=now() - row_start,
        goal_accuracy=workload.goal_accuracy,
        notes=note,
    )


def run_ddp(workload: Workload, k: int | None = None, world: int = 2) -> RowResult:
    """torch DDP on `world` processes over gloo on 127.0.0.1; local SGD when `k` is given."""
    ctx = mp.get_context("spawn")
    row_start = now()
    queue = ctx.Queue()
    port = free_port()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    processes = [
        ctx.Process(target=_ddp_main, args=(rank, world, port, workload, k, queue))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    started, logs, note = _collect(processes, queue)
    threads = max(1, workload.threads // world)
    if k is None:
        name, framework = f"torch DDP {world}x{threads} thr gloo", "ddp"
    else:
        name, framework = f"DDP local SGD K={k}", "ddp-local-sgd"
    return RowResult(
        name=name,
        framework=framework,
        parallelism=world,
        k=k,
        startup_s=started - row_start,
        epochs=logs,
        wall_s=now() - row_start,
        goal_accuracy=workload.goal_accuracy,
        notes=note,
    )
