"""`kubeml infer`: predictions of a trained task's model for samples in a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kubeml.cli._context import client
from kubeml.cli._output import jsonable
from kubeml.errors import InvalidInputError


def infer(
    ctx: typer.Context,
    network: Annotated[str, typer.Option("--network", "-n", help="id of the task that trained it")],
    datafile: Annotated[
        Path,
        typer.Option(
            "--datafile",
            help="JSON file holding a list of samples",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
) -> None:
    """Run a trained network on the samples of a JSON file and print its output as JSON."""
    data = read_samples(datafile)
    result = client(ctx).infer(network, data)
    typer.echo(json.dumps(_plain(jsonable(result))))


_JSON_KIND = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}  # fmt: skip


def read_samples(path: Path) -> list[Any]:
    """The samples of a `--datafile`: a non-empty JSON list, or a clear error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"--datafile {path}: not a UTF-8 text (JSON) file") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"--datafile {path}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}); write the samples as a JSON list, e.g. [[0, 0.5, ...], ...]"
        ) from exc
    if not isinstance(data, list):
        raise InvalidInputError(
            f"--datafile {path}: holds a JSON {_JSON_KIND.get(type(data), 'value')}, but infer "
            "needs a list of samples, e.g. [[0, 0.5, ...], ...]"
        )
    if not data:
        raise InvalidInputError(f"--datafile {path}: the list is empty; give at least one sample")
    return data


def _plain(value: Any) -> Any:
    """Outputs that are arrays (a client may hand back numpy values) as JSON lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
