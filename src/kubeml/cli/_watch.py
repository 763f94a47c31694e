"""`train --watch`: a live progress line (epoch, round, loss, accuracy, N) until the task ends."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from kubeml.api.schemas import TaskInfo, TaskState
from kubeml.cli._output import console, fmt_float, fmt_percent
from kubeml.errors import TaskFailedError

if TYPE_CHECKING:
    from kubeml.client import Client


def progress_line(info: TaskInfo, elapsed_s: float) -> str:
    parts = [f"task {info.id}", info.state.value]
    if info.epoch:
        parts += [f"epoch {info.epoch}/{info.request.epochs}", f"round {info.round}"]
        parts.append(f"train loss {fmt_float(info.train_loss)}")
    if info.accuracy is not None:
        parts.append(f"accuracy {fmt_percent(info.accuracy)}")
    parts += [f"N={info.parallelism}", f"{elapsed_s:.0f}s"]
    return " | ".join(parts)


def watch_task(api: Client, task_id: str, *, poll_s: float = 0.5) -> TaskInfo:
    """Follow a task until it ends; a failed task raises `TaskFailedError` with its traceback.

    On a terminal the line is redrawn in place; otherwise (a log, a pipe) a line is printed
    whenever the state or the epoch changes.
    """
    err = console(stderr=True)
    start = time.monotonic()
    info = api.get_task(task_id)
    try:
        if err.is_terminal:
            from rich.live import Live

            with Live(progress_line(info, 0), console=err, refresh_per_second=4) as live:
                while not info.state.finished:
                    time.sleep(poll_s)
                    info = api.get_task(task_id)
                    live.update(progress_line(info, time.monotonic() - start))
        else:
            shown: tuple[object, ...] = ()
            while True:
                key = (info.state, info.epoch, info.accuracy)
                if key != shown:
                    typer.echo(progress_line(info, time.monotonic() - start), err=True)
                    shown = key
                if info.state.finished:
                    break
                time.sleep(poll_s)
                info = api.get_task(task_id)
    except KeyboardInterrupt:
        typer.echo(
            f"stopped watching; task {task_id} keeps running "
            f"(`kubeml task stop --id {task_id}` stops it)",
            err=True,
        )
        raise typer.Exit(130) from None
    _summarise(info)
    return info


def _summarise(info: TaskInfo) -> None:
    if info.state is TaskState.FAILED:
        raise TaskFailedError(
            f"task {info.id} failed: {info.error}; `kubeml logs --id {info.id}` shows its log",
            details=info.traceback,
        )
    summary = f"task {info.id} {info.state.value} after {info.epoch} epoch(s)"
    if info.accuracy is not None:
        summary += f": accuracy {fmt_percent(info.accuracy)}, val loss {fmt_float(info.val_loss)}"
    typer.echo(summary)
