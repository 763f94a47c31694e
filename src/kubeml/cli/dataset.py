"""`kubeml dataset create|list|delete`: upload train and test arrays under a name, or
register a location that holds them."""

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
    traindata: Annotated[Path | None, _array_file("--traindata", "training features")] = None,
    trainlabels: Annotated[Path | None, _array_file("--trainlabels", "training labels")] = None,
    testdata: Annotated[Path | None, _array_file("--testdata", "test features")] = None,
    testlabels: Annotated[Path | None, _array_file("--testlabels", "test labels")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="register, do not upload: a directory every node can read (absolute path) "
            "or a URL (s3://bucket/prefix) holding train_x.npy, train_y.npy, test_x.npy and "
            "test_y.npy",
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle", help="accept .pkl files (loading a pickle can run code: trust it)"
        ),
    ] = False,
) -> None:
    """Upload a dataset (features and labels for training and for testing), or register
    one that stays where it is (--source)."""
    files = {
        "--traindata": traindata,
        "--trainlabels": trainlabels,
        "--testdata": testdata,
        "--testlabels": testlabels,
    }
    given = [flag for flag, path in files.items() if path is not None]
    if source is not None:
        if given:
            raise typer.BadParameter(
                f"give either --source or the four files, not both ({', '.join(given)} given)"
            )
        info = client(ctx).register_dataset(name, source)
    else:
        missing = [flag for flag, path in files.items() if path is None]
        if missing:
            raise typer.BadParameter(
                f"missing {', '.join(missing)}: upload all four files, or register a "
                "location with --source"
            )
        info = client(ctx).create_dataset(
            name, traindata, trainlabels, testdata, testlabels, allow_pickle=allow_pickle
        )
    shape = "x".join(str(d) for d in info.feature_shape) or "scalar"
    how = f"registered from {info.source}" if info.source else "created"
    typer.echo(
        f"dataset {name!r} {how}: {info.train_size} train / {info.test_size} test samples "
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
        ["NAME", "TRAIN", "TEST", "SHAPE", "DTYPE", "LABELS", "CREATED", "SOURCE"],
        [
            (
                d.name,
                d.train_size,
                d.test_size,
                "x".join(map(str, d.feature_shape)),
                d.feature_dtype,
                d.label_dtype,
                fmt_time(d.created_at),
                d.source or "uploaded",
            )
            for d in datasets
        ],
    )


@app.command()
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a dataset (histories and trained models stay)."""
    client(ctx).delete_dataset(name)
    typer.echo(f"dataset {name!r} deleted")
