"""`kubeml function create|update|list|delete`: deploy the code of training functions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kubeml.cli._context import client
from kubeml.cli._output import fmt_time, print_json, print_table
from kubeml.errors import InvalidInputError

app = typer.Typer(help="Deploy the code of training functions.", no_args_is_help=True)

Name = Annotated[str, typer.Option("--name", "-n", help="name of the function")]
Code = Annotated[
    Path,
    typer.Option(
        "--code", help="Python file defining main()", exists=True, dir_okay=False, readable=True
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


def _read_code(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"--code {path}: not a UTF-8 text file; give the .py file of the function"
        ) from exc


@app.command()
def create(ctx: typer.Context, name: Name, code: Code) -> None:
    """Deploy a new function from a Python file."""
    source = _read_code(code)  # a bad file fails before any server is started
    info = client(ctx).create_function(name, source)
    typer.echo(f"function {name!r} created (sha256 {info.sha256[:12]})")


@app.command()
def update(ctx: typer.Context, name: Name, code: Code) -> None:
    """Replace the code of a function (running tasks keep the version they started with)."""
    source = _read_code(code)
    info = client(ctx).update_function(name, source)
    typer.echo(f"function {name!r} updated (sha256 {info.sha256[:12]})")


@app.command("list")
def list_(ctx: typer.Context, json: Json = False) -> None:
    """List the deployed functions."""
    functions = client(ctx).list_functions()
    if json:
        print_json(functions)
        return
    if not functions:
        typer.echo("no functions; deploy one with `kubeml function create --name NAME --code FILE`")
        return
    print_table(
        ["NAME", "SHA256", "CREATED", "UPDATED"],
        [
            (f.name, f.sha256[:12], fmt_time(f.created_at), fmt_time(f.updated_at))
            for f in functions
        ],
    )


@app.command()
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a function (trained models of its finished tasks still serve `infer`)."""
    client(ctx).delete_function(name)
    typer.echo(f"function {name!r} deleted")
