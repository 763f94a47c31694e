"""`kubeml logs`: a task's log, the job's events and its functions' output (`-f` follows)."""

from __future__ import annotations

import json as jsonlib
import time
from typing import TYPE_CHECKING, Annotated

import typer

from kubeml.cli._context import client

if TYPE_CHECKING:
    from kubeml.api.schemas import LogLine


def logs(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Option("--id", help="task id")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines until the task ends")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="print one JSON object per line")] = False,
    poll_s: Annotated[
        float, typer.Option("--poll", help="seconds between polls", hidden=True)
    ] = 0.5,
) -> None:
    """Print the log of a task."""
    api = client(ctx)
    since = 0
    while True:
        # Read the state before the lines: once it says finished, this read has everything.
        finished = not follow or api.get_task(task_id).state.finished
        lines = api.logs(task_id, since=since)
        for line in lines:
            _print(line, json)
        if lines:
            since = lines[-1].index + 1
        if finished:
            return
        time.sleep(poll_s)


def _print(line: LogLine, as_json: bool) -> None:
    if as_json:
        typer.echo(jsonlib.dumps(line.model_dump(mode="json")))
    else:
        stamp = line.time.astimezone().strftime("%H:%M:%S")
        typer.echo(f"{stamp} [{line.source}] {line.message}")
