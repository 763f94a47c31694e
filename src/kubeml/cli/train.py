"""`kubeml train`: start a train task and print its id (`--watch` follows it to the end)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from kubeml.cli._context import client

if TYPE_CHECKING:
    from kubeml.api.schemas import TrainRequest

# TrainRequest field -> the CLI flag that sets it, to name the flag in validation errors.
_FLAGS = {
    "function": "--function",
    "dataset": "--dataset",
    "epochs": "--epochs",
    "batch_size": "--batch",
    "lr": "--lr",
    "parallelism": "--parallelism",
    "k": "--K",
    "validate_every": "--validate-every",
    "goal_accuracy": "--goal-accuracy",
    "seed": "--seed",
    "optimizer_state": "--optimizer-state",
    "outer_optimizer": "--outer-optimizer",
    "outer_lr": "--outer-lr",
    "outer_momentum": "--outer-momentum",
    "lr_scaling": "--lr-scaling",
    "policy": "--policy",
    "max_retries": "--max-retries",
    "checkpoint_every_s": "--checkpoint-every",
    "memory_mb": "--memory-mb",
    "shards": "--shards",
    "sync_precision": "--sync-precision",
    "overlap": "--overlap",
}


def train(
    ctx: typer.Context,
    function: Annotated[str, typer.Option("--function", "-f", help="function to train")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset to train on")],
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="epochs to train")] = 1,
    batch: Annotated[int, typer.Option("--batch", "-b", help="batch size")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="learning rate")] = 0.01,
    parallelism: Annotated[
        int, typer.Option("--parallelism", help="functions N (the start value unless --static)")
    ] = 2,
    static: Annotated[
        bool, typer.Option("--static", help="keep N fixed instead of tuning it by throughput")
    ] = False,
    k: Annotated[
        int | None,
        typer.Option(
            "--K", help="local steps between model averages; -1 = once per epoch [default: 8]"
        ),
    ] = None,
    sparse_avg: Annotated[
        bool, typer.Option("--sparse-avg", help="average once per epoch (same as --K -1)")
    ] = False,
    validate_every: Annotated[
        int, typer.Option("--validate-every", help="validate every N epochs; 0 = only at the end")
    ] = 0,
    goal_accuracy: Annotated[
        float, typer.Option("--goal-accuracy", help="stop once test accuracy (%) reaches this")
    ] = 100.0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="seed of data order and init [default: 0]")
    ] = None,
    optimizer_state: Annotated[
        Literal["keep", "reset"],
        typer.Option(
            "--optimizer-state",
            help="optimizer state (momentum) between rounds: keep it, or reset it as in 2021",
        ),
    ] = "keep",
    outer_optimizer: Annotated[
        Literal["average", "nesterov", "adaptive"] | None,
        typer.Option(
            "--outer-optimizer",
            help="how a round's average moves the model: plain average (2021), a Nesterov "
            "outer step on the averaged change, or that step with its momentum scaled by "
            "how well the change agrees with it [default: adaptive]",
        ),
    ] = None,
    outer_lr: Annotated[
        float | None,
        typer.Option("--outer-lr", help="outer step size, (0, 2] [default: 0.7]"),
    ] = None,
    outer_momentum: Annotated[
        float | None,
        typer.Option("--outer-momentum", help="outer momentum, [0, 1) [default: 0.9]"),
    ] = None,
    lr_scaling: Annotated[
        Literal["none", "linear", "sqrt"] | None,
        typer.Option(
            "--lr-scaling",
            help="each of N functions trains at lr x sqrt(N), lr x N or lr [default: sqrt]",
        ),
    ] = None,
    policy: Annotated[
        Literal["static", "throughput", "goodput"] | None,
        typer.Option(
            "--policy", help="how N changes between epochs [default: throughput; --static: static]"
        ),
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option(
            "--max-retries", help="lost functions replaced on a fresh worker before N shrinks"
        ),
    ] = 3,
    checkpoint_every: Annotated[
        float,
        typer.Option(
            "--checkpoint-every", help="seconds between mid-epoch checkpoints; 0 = epoch ends"
        ),
    ] = 60.0,
    memory_mb: Annotated[
        int | None,
        typer.Option(
            "--memory-mb",
            help="the most memory each function may use, in MB; past it the task fails "
            "[default: the server's KUBEML_FUNCTION_MEMORY_MB, 0 = unlimited]",
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            help="parameter shards on a Ray cluster; 0 = merge in the control plane "
            "[default: one per node that runs functions, when there are several]",
        ),
    ] = None,
    sync_precision: Annotated[
        Literal["fp32", "bf16", "int8", "int4"],
        typer.Option(
            "--sync-precision",
            help="how a sharded round's changes travel: fp32, bf16, int8 or int4",
        ),
    ] = "fp32",
    overlap: Annotated[
        bool,
        typer.Option(
            "--overlap",
            help="a sharded round's sync runs beside the next round's steps, its outer step "
            "landing a round late (a replayed round is then not the same bits)",
        ),
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="show live progress until the task ends")
    ] = False,
) -> None:
    """Start a train task and print its id."""
    if sparse_avg and k not in (None, -1):
        raise typer.BadParameter(f"--sparse-avg means --K -1; drop one of them (got --K {k})")
    if sparse_avg:
        k = -1
    fields: dict[str, Any] = {
        "function": function, "dataset": dataset, "epochs": epochs, "batch_size": batch,
        "lr": lr, "parallelism": parallelism, "static": static,
        "validate_every": validate_every, "goal_accuracy": goal_accuracy,
        "optimizer_state": optimizer_state, "max_retries": max_retries,
        "checkpoint_every_s": checkpoint_every, "sync_precision": sync_precision,
        "overlap": overlap,
    }  # fmt: skip
    optional = {
        "seed": seed, "k": k, "outer_optimizer": outer_optimizer, "outer_lr": outer_lr,
        "outer_momentum": outer_momentum, "lr_scaling": lr_scaling, "policy": policy,
        "memory_mb": memory_mb, "shards": shards,
    }  # fmt: skip
    fields.update({name: value for name, value in optional.items() if value is not None})
    request = _request(fields)
    if goal_accuracy < 100 and validate_every == 0 and epochs > 1:
        typer.echo(
            f"Warning: --goal-accuracy {goal_accuracy:g} is checked only when the task "
            "validates; with --validate-every 0 that is after the last epoch, so the task "
            "will not stop early (add --validate-every 1 to check after every epoch)",
            err=True,
        )
    api = client(ctx)
    task_id = api.train(request)
    typer.echo(task_id)
    if watch:
        from kubeml.cli._watch import watch_task

        watch_task(api, task_id)


def _request(fields: dict[str, Any]) -> TrainRequest:
    """Validate the options with the API's own rules, naming the flag that is wrong."""
    from pydantic import ValidationError

    from kubeml.api.schemas import TrainRequest

    try:
        return TrainRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise typer.BadParameter(
            f"{message} (got {fields.get(field)!r})", param_hint=f"'{_FLAGS.get(field, field)}'"
        ) from exc
