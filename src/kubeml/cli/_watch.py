"""`train --watch` and `task watch`: a live bar per epoch, or one plain line per epoch.

On a terminal every epoch gets a bar with round r/R, samples/s, elapsed, ETA and the
latest train loss, accuracy and N, redrawn in place; into a pipe or a log each finished
epoch prints one line. A finished task replays its epochs and summary. Ctrl-C detaches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from kubeml.api.schemas import EpochRecord, RoundPoint, TaskInfo, TaskProgress, TaskState
from kubeml.cli._output import console, fmt_duration, fmt_float, fmt_percent
from kubeml.errors import TaskFailedError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

    from kubeml.client import Client

SHOWN_EPOCHS = 12  # bars on screen; older epochs fold into one line


@dataclass
class _View:
    """What the watcher knows of a task: the server's answers, accumulated."""

    info: TaskInfo
    rounds_per_epoch: int | None = None
    rounds: list[RoundPoint] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)
    received: float = field(default_factory=time.monotonic)  # when the newest point came

    def update(self, progress: TaskProgress) -> None:
        self.info, self.epochs = progress.task, progress.epochs
        self.rounds_per_epoch = progress.rounds_per_epoch
        if progress.rounds:
            self.rounds += progress.rounds
            self.received = time.monotonic()

    @property
    def since(self) -> int:
        return self.rounds[-1].index + 1 if self.rounds else 0

    @property
    def current_epoch(self) -> int | None:
        """The epoch in progress, or None when the task is not training one."""
        if self.info.state is not TaskState.RUNNING or len(self.epochs) >= self.info.request.epochs:
            return None
        return len(self.epochs) + 1

    def epoch_rounds(self, epoch: int) -> list[RoundPoint]:
        return [p for p in self.rounds if p.epoch == epoch]

    def epoch_elapsed(self, epoch: int) -> float | None:
        """Seconds the epoch in progress has run, from the server's round times."""
        if not self.rounds:
            return None
        start = max((p.elapsed_s for p in self.rounds if p.epoch < epoch), default=0.0)
        now = self.rounds[-1].elapsed_s + time.monotonic() - self.received
        return max(0.0, now - start)


@dataclass(frozen=True)
class _Row:
    """One epoch's bar: rounds done of total, speed, time and the latest numbers."""

    epoch: int
    done: int
    total: int | None
    rate: float | None
    elapsed: float | None
    eta: float | None
    loss: float | None
    accuracy: float | None
    n: int


def _epoch_row(record: EpochRecord) -> _Row:
    return _Row(record.epoch, record.rounds, record.rounds, record.samples_per_s,
                record.epoch_duration_s, None, record.train_loss, record.accuracy,
                record.parallelism)  # fmt: skip


def _current_row(view: _View, epoch: int) -> _Row:
    points = view.epoch_rounds(epoch)
    done = points[-1].round if points else 0
    total = view.rounds_per_epoch
    elapsed = view.epoch_elapsed(epoch)
    rate = eta = None
    if elapsed and points:
        rate = sum(p.samples for p in points) / elapsed
        if total:
            eta = elapsed / done * max(0, total - done)
    last = view.epochs[-1] if view.epochs else None
    return _Row(
        epoch, done, total, rate, elapsed, eta,
        loss=points[-1].train_loss if points else None,
        accuracy=last.accuracy if last else None,
        n=points[-1].parallelism if points else view.info.parallelism,
    )  # fmt: skip


def _rows(view: _View) -> list[_Row]:
    rows = [_epoch_row(e) for e in view.epochs]
    current = view.current_epoch
    if current is not None:
        rows.append(_current_row(view, current))
    return rows


def _bar(done: int, total: int | None, width: int) -> Text:
    from rich.text import Text

    if not total:
        return Text("━" * width, style="dim")
    filled = min(width, round(width * done / total))
    style = "green" if done >= total else "magenta"
    return Text.assemble(("━" * filled, style), ("━" * (width - filled), "dim"))


def _row_text(row: _Row, epochs: int, bar_width: int) -> Text:
    from rich.text import Text

    digits = len(str(epochs))
    rate = f"{row.rate:.0f}" if row.rate is not None else "-"
    if row.eta is not None:
        eta = f"ETA {fmt_duration(row.eta)}"
    else:
        eta = "done" if row.total and row.done >= row.total else "ETA -"
    return Text.assemble(
        f"epoch {row.epoch:>{digits}}/{epochs} ", _bar(row.done, row.total, bar_width),
        f" {row.done}/{row.total or '?'} {rate} samples/s {fmt_duration(row.elapsed)} {eta} "
        f"loss {fmt_float(row.loss)} acc {fmt_percent(row.accuracy)} N={row.n}",
    )  # fmt: skip


def task_eta(view: _View, rows: list[_Row]) -> float | None:
    """Seconds until the last epoch ends: the current epoch's ETA plus the epochs after it
    at the mean duration of those done (validation included, as it was measured)."""
    current = view.current_epoch
    if current is None or not rows or rows[-1].epoch != current or rows[-1].eta is None:
        return None
    durations = [e.epoch_duration_s for e in view.epochs] or [rows[-1].elapsed or 0.0]
    left = view.info.request.epochs - current
    return rows[-1].eta + left * sum(durations) / len(durations)


def _render(view: _View, width: int) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    info, request = view.info, view.info.request
    header = Text.assemble(
        (f"task {info.id} ", "bold"), (info.state.value, _STYLE.get(info.state, "")),
        f" {request.function} on {request.dataset}, K={request.k}, batch {request.batch_size}, "
        f"lr {request.lr:g}",
    )  # fmt: skip
    rows = _rows(view)
    eta = task_eta(view, rows)
    if eta is not None:
        header.append(f", task ETA {fmt_duration(eta)}")
    lines: list[RenderableType] = [header]
    if len(rows) > SHOWN_EPOCHS:
        lines.append(Text(f"... {len(rows) - SHOWN_EPOCHS} earlier epoch(s)", style="dim"))
        rows = rows[-SHOWN_EPOCHS:]
    bar_width = max(8, min(30, width - 72))  # the rest of a row takes about 70 columns
    lines += [_row_text(row, request.epochs, bar_width) for row in rows]
    if not rows:
        lines.append(Text("waiting for the first round...", style="dim"))
    return Group(*lines)


_STYLE = {TaskState.RUNNING: "green", TaskState.FAILED: "red", TaskState.STOPPED: "yellow",
          TaskState.SUCCEEDED: "blue", TaskState.QUEUED: "dim"}  # fmt: skip


def epoch_line(record: EpochRecord, epochs: int) -> str:
    """The plain line of one finished epoch (for logs and CI)."""
    text = (
        f"epoch {record.epoch}/{epochs}: train loss {record.train_loss:.4f}, "
        f"N={record.ns_text()}, "
        f"{record.rounds} round(s), {record.epoch_duration_s:.1f} s, "
        f"{record.samples_per_s:.0f} samples/s"
    )
    if record.accuracy is not None:
        text += f", val loss {fmt_float(record.val_loss)}, accuracy {fmt_percent(record.accuracy)}"
    return text


def watch_task(api: Client, task_id: str, *, poll_s: float = 0.5) -> TaskInfo:
    """Follow a task until it ends; a failed task raises `TaskFailedError` with its traceback."""
    err = console(stderr=True)
    view = _View(api.get_task(task_id))
    try:
        if err.is_terminal:
            from rich.live import Live

            view.update(api.progress(task_id))
            first = _render(view, err.width)
            with Live(first, console=err, auto_refresh=False, transient=False) as live:
                while not view.info.state.finished:
                    time.sleep(poll_s)
                    view.update(api.progress(task_id, since=view.since))
                    live.update(_render(view, err.width), refresh=True)
        else:
            printed = 0
            while True:
                view.update(api.progress(task_id, since=view.since))
                for record in view.epochs[printed:]:
                    typer.echo(epoch_line(record, view.info.request.epochs), err=True)
                printed = len(view.epochs)
                if view.info.state.finished:
                    break
                time.sleep(poll_s)
    except KeyboardInterrupt:
        typer.echo(
            f"detached from task {task_id}; it keeps running. Attach again with "
            f"`kubeml task watch --id {task_id}`, stop it with `kubeml task stop --id {task_id}`",
            err=True,
        )
        raise typer.Exit(130) from None
    _summarise(view.info)
    return view.info


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
