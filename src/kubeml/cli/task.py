"""`kubeml task list|watch|stop|prune|resume`: the train tasks, queued, running and finished."""

from __future__ import annotations

from typing import Annotated

import typer

from kubeml.cli._confirm import confirm
from kubeml.cli._context import client
from kubeml.cli._output import fmt_percent, fmt_time, print_json, print_table

app = typer.Typer(help="List, watch, stop, prune and resume train tasks.", no_args_is_help=True)

TaskId = Annotated[str, typer.Option("--id", help="task id")]


@app.command("list")
def list_(
    ctx: typer.Context,
    short: Annotated[bool, typer.Option("--short", help="print only the task ids")] = False,
    json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the tasks and where each one is."""
    tasks = client(ctx).list_tasks()
    if json:
        print_json(tasks)
        return
    if short:
        for info in tasks:
            typer.echo(info.id)
        return
    if not tasks:
        typer.echo("no tasks; start one with `kubeml train -f FUNCTION -d DATASET`")
        return
    print_table(
        ["ID", "STATE", "FUNCTION", "DATASET", "EPOCH", "N", "K", "ACCURACY", "LOST", "CREATED"],
        [
            (
                t.id,
                t.state.value,
                t.request.function,
                t.request.dataset,
                f"{t.epoch}/{t.request.epochs}",
                t.parallelism,
                t.request.k,
                fmt_percent(t.accuracy),
                f"{t.failures} ({t.retries} replaced)" if t.failures else "-",
                fmt_time(t.created_at),
            )
            for t in tasks
        ],
    )


@app.command()
def stop(ctx: typer.Context, task_id: TaskId) -> None:
    """Stop a task: a queued one at once, a running one at its next round boundary."""
    info = client(ctx).stop_task(task_id)
    if info.state.finished:
        typer.echo(f"task {task_id} {info.state.value}")
    else:
        typer.echo(f"task {task_id} stopping at its next round boundary")


Yes = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


@app.command()
def prune(ctx: typer.Context, yes: Yes = False) -> None:
    """Forget finished tasks (their histories and trained models stay; infer still works)."""
    api = client(ctx)
    finished = [t.id for t in api.list_tasks() if t.state.finished]
    if not finished:
        typer.echo("no finished tasks to prune")
        return
    confirm(f"forget {len(finished)} finished task(s) ({' '.join(finished)})?", yes=yes)
    pruned = api.prune_tasks()
    typer.echo(f"pruned {len(pruned)} tasks" + (f": {' '.join(pruned)}" if pruned else ""))


@app.command()
def watch(
    ctx: typer.Context,
    task_id: TaskId,
    poll_s: Annotated[
        float, typer.Option("--poll", help="seconds between polls", hidden=True)
    ] = 0.5,
) -> None:
    """Attach to a task: live progress until it ends (Ctrl-C detaches); a finished task
    replays its epochs and summary."""
    from kubeml.cli._watch import watch_task

    watch_task(client(ctx), task_id, poll_s=poll_s)


@app.command()
def resume(ctx: typer.Context, task_id: TaskId) -> None:
    """Continue a failed or interrupted task from its last completed epoch."""
    client(ctx).resume_task(task_id)
    typer.echo(f"task {task_id} queued again; it continues after its last completed epoch")
