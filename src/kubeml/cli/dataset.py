"""`kubeml dataset create|list|delete`: upload train and test arrays under a name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kubeml.cli._context import client
from kubeml.cli._output import fmt_time, print_json, print_table

app = typer.Typer(help="Upload and manage datasets.", no_args_is_help=True)

Name = Annotated[str, typer.Option("--name", "-n", help="name of the dataset")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


def _array_file(flag: str, what: str) -> Any:
    return typer.Option(
        flag, help=f"{what} (.npy or .npz)", exists=True, dir_okay=False, readable=True
    )


@app.command()
def create(
    ctx: typer.Context,
    name: Name,
    traindata: Annotated[Path, _array_file("--traindata", "training features")],
    trainlabels: Annotated[Path, _array_file("--trainlabels", "training labels")],
    testdata: Annotated[Path, _array_file("--testdata", "test features")],
    testlabels: Annotated[Path, _array_file("--testlabels", "test labels")],
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle", help="accept .pkl files (loading a pickle can run code: trust it)"
        ),
    ] = False,
) -> None:
    """Upload a dataset: features and labels for training and for testing."""
    info = client(ctx).create_dataset(
        name, traindata, trainlabels, testdata, testlabels, allow_pickle=allow_pickle
    )
    shape = "x".join(str(d) for d in info.feature_shape) or "scalar"
    typer.echo(
        f"dataset {name!r} created: {info.train_size} train / {info.test_size} test samples "
        f"of shape {shape} ({info.feature_dtype})"
    )


@app.command("list")
def list_(ctx: typer.Context, json: Json = False) -> None:
    """List the uploaded datasets."""
    datasets = client(ctx).list_datasets()
    if json:
        print_json(datasets)
        return
    if not datasets:
        typer.echo("no datasets; upload one with `kubeml dataset create -n NAME --traindata ...`")
        return
    print_table(
        ["NAME", "TRAIN", "TEST", "SHAPE", "DTYPE", "LABELS", "CREATED"],
        [
            (
                d.name,
                d.train_size,
                d.test_size,
                "x".join(map(str, d.feature_shape)),
                d.feature_dtype,
                d.label_dtype,
                fmt_time(d.created_at),
            )
            for d in datasets
        ],
    )


@app.command()
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a dataset (histories and trained models stay)."""
    client(ctx).delete_dataset(name)
    typer.echo(f"dataset {name!r} deleted")
