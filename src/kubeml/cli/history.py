"""`kubeml history get|list|delete|prune|plot|export`: what each epoch of a train task
measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kubeml.cli._confirm import confirm
from kubeml.cli._context import client
from kubeml.cli._output import fmt_duration, fmt_float, fmt_percent, print_json, print_table
from kubeml.errors import InvalidInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kubeml.api.schemas import History

app = typer.Typer(help="Inspect the per-epoch history of train tasks.", no_args_is_help=True)

TaskId = Annotated[str, typer.Option("--id", help="task id")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


def _last_accuracy(history: History) -> float | None:
    scored = [e.accuracy for e in history.epochs if e.accuracy is not None]
    return scored[-1] if scored else None


@app.command()
def get(ctx: typer.Context, task_id: TaskId, json: Json = False) -> None:
    """Show the history of one task: loss, accuracy, N and speed per epoch."""
    history = client(ctx).get_history(task_id)
    if json:
        print_json(history)
        return
    request = history.request
    title = (
        f"task {history.task_id}: {request.function} on {request.dataset}, "
        f"{history.state.value}, K={request.k}, batch {request.batch_size}, lr {request.lr}"
    )
    print_table(
        ["EPOCH", "TRAIN LOSS", "VAL LOSS", "ACCURACY", "N", "ROUNDS", "SECONDS", "SAMPLES/S"],
        [
            (
                e.epoch,
                fmt_float(e.train_loss),
                fmt_float(e.val_loss),
                fmt_percent(e.accuracy),
                e.ns_text(),
                e.rounds,
                f"{e.epoch_duration_s:.1f}",
                f"{e.samples_per_s:.0f}",
            )
            for e in history.epochs
        ],
        title=title,
    )
    if not history.epochs:
        typer.echo("(no epoch has finished yet)")


_LIST_COLUMNS = ["TASK", "FUNCTION", "DATASET", "STATE", "EPOCHS", "ACCURACY", "TRAIN LOSS",
                 "MEAN N", "K", "STATIC", "TIME"]  # fmt: skip


@app.command("list")
def list_(ctx: typer.Context, json: Json = False) -> None:
    """List the histories of all tasks."""
    histories = client(ctx).list_histories()
    if json:
        print_json(histories)
        return
    if not histories:
        typer.echo("no histories; start a task with `kubeml train -f FUNCTION -d DATASET`")
        return
    print_table(
        _LIST_COLUMNS,
        [
            (
                h.task_id,
                h.request.function,
                h.request.dataset,
                h.state.value,
                f"{len(h.epochs)}/{h.request.epochs}",
                fmt_percent(_last_accuracy(h)),
                fmt_float(h.epochs[-1].train_loss if h.epochs else None),
                _mean_parallelism(h),
                h.request.k,
                "yes" if h.request.static else "no",
                fmt_duration(sum(e.epoch_duration_s for e in h.epochs)) if h.epochs else None,
            )
            for h in histories
        ],
    )


def _mean_parallelism(history: History) -> str | None:
    """Mean N over the epochs, weighted by their duration (as the 2021 CLI reported it)."""
    total = sum(e.epoch_duration_s for e in history.epochs)
    if not history.epochs:
        return None
    if total <= 0:
        return f"{sum(e.parallelism for e in history.epochs) / len(history.epochs):.1f}"
    return f"{sum(e.parallelism * e.epoch_duration_s for e in history.epochs) / total:.1f}"


@app.command()
def delete(ctx: typer.Context, task_id: TaskId) -> None:
    """Delete a finished task's history, with its trained model and log."""
    client(ctx).delete_history(task_id)
    typer.echo(f"history of task {task_id} deleted (with its trained model and log)")


@app.command()
def prune(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete the histories, trained models and logs of all finished tasks."""
    api = client(ctx)
    finished = [h.task_id for h in api.list_histories() if h.state.finished]
    if not finished:
        typer.echo("no finished histories to prune")
        return
    confirm(
        f"delete the histories, trained models and logs of {len(finished)} finished "
        f"task(s) ({' '.join(finished)})?",
        yes=yes,
    )
    pruned = api.prune_histories()
    typer.echo(f"pruned {len(pruned)} histories" + (f": {' '.join(pruned)}" if pruned else ""))


@app.command()
def plot(
    ctx: typer.Context,
    task_id: TaskId,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="image file to write (.png, .svg, .pdf)")
    ],
) -> None:
    """Plot loss and accuracy per epoch into an image file."""
    history = client(ctx).get_history(task_id)
    if not history.epochs:
        raise InvalidInputError(f"task {task_id} has no finished epoch to plot yet")
    _plot(history, output)
    typer.echo(f"wrote {output}")


@app.command()
def export(
    ctx: typer.Context,
    task_id: TaskId,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="folder to write into [default: kubeml-history/ID]"),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="also write TensorBoard event files [default: when tensorboard is installed]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a task's epochs and round points as CSV and TensorBoard event files."""
    from kubeml.client.export import TENSORBOARD_HINT, default_directory, export_history

    directory = output if output is not None else default_directory(task_id)
    done = export_history(client(ctx), task_id, directory, tensorboard=tensorboard)
    typer.echo(f"wrote {done.epochs} epoch(s) to {done.epochs_csv}")
    if done.rounds_csv is not None:
        typer.echo(f"wrote {done.rounds} round point(s) to {done.rounds_csv}")
    else:
        typer.echo("no round points: the server keeps them in memory, and has none of this task")
    if done.event_file is not None:
        typer.echo(f"wrote TensorBoard events to {done.event_file} "
                   f"(view them: tensorboard --logdir {directory.parent})")  # fmt: skip
    elif tensorboard is None:
        typer.echo(f"tensorboard is not installed, so no event files: {TENSORBOARD_HINT}",
                   err=True)  # fmt: skip


def parallelism_path(history: History) -> str:
    """N as it ran: `2` for a steady task, `2→4→3` when the scheduler changed it (between
    or within epochs)."""
    path: list[int] = []
    for record in history.epochs:
        for n in record.ns():
            if not path or path[-1] != n:
                path.append(n)
    return "→".join(map(str, path)) or str(history.request.parallelism)


def _plot(history: History, output: Path) -> None:
    import matplotlib.pyplot as plt

    fig = history_figure(history)
    try:
        fig.savefig(output)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--output {output}: cannot write the plot ({exc})") from exc
    finally:
        plt.close(fig)


def history_figure(history: History) -> Figure:
    """Loss, test accuracy and N per epoch, side by side; the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [e.epoch for e in history.epochs]
    scored = [e for e in history.epochs if e.accuracy is not None]
    fig, (loss_ax, acc_ax, n_ax) = plt.subplots(1, 3, figsize=(14, 4))
    loss_ax.plot(epochs, [e.train_loss for e in history.epochs], "o-", label="train loss")
    if scored:
        loss_ax.plot(
            [e.epoch for e in scored], [e.val_loss for e in scored], "s-", label="validation loss"
        )
        acc_ax.plot([e.epoch for e in scored], [e.accuracy for e in scored], "o-", color="C2")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    n_ax.step(epochs, [e.parallelism for e in history.epochs], "o-", where="mid", color="C3")
    n_ax.set(xlabel="epoch", ylabel="functions (N)", title=f"N: {parallelism_path(history)}")
    n_ax.set_ylim(bottom=0)
    n_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, acc_ax, n_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    request = history.request
    fig.suptitle(
        f"task {history.task_id}: {request.function} on {request.dataset}, "
        f"N={parallelism_path(history)}, K={request.k}, batch {request.batch_size}"
    )
    fig.tight_layout()
    return fig
