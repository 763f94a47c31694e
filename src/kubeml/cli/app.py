"""The root `kubeml` command: global options, error reporting, and the nouns it groups.

Every error a command raises ends here: a `KubeMLError` prints
`Error: <what failed, for which name, what to do>` to stderr and exits 1; usage errors
(a missing option, a bad value) exit 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from kubeml import __version__
from kubeml.cli import dataset, function, history, infer, logs, server, task, train
from kubeml.cli._context import state
from kubeml.errors import KubeMLError

if TYPE_CHECKING:
    from typer._click import Context as ClickContext  # typer vendors click

EXIT_ERROR = 1


class _ReportingGroup(TyperGroup):
    """The root group: turns every exception of a command into one `Error:` line."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort, BrokenPipeError):
            raise  # usage errors, explicit exits and closed pipes: typer handles them
        except KubeMLError as exc:
            _report(ctx, exc, str(exc), exc.details)
        except Exception as exc:
            _report(ctx, exc, f"unexpected {type(exc).__name__}: {exc}", None, unexpected=True)
        raise typer.Exit(EXIT_ERROR)


def _report(
    ctx: ClickContext, exc: BaseException, message: str, details: str | None, *,
    unexpected: bool = False,
) -> None:  # fmt: skip
    debug = state(ctx).debug
    if debug:
        traceback.print_exception(exc)
    typer.echo(f"Error: {message}", err=True)
    if details:
        typer.echo(details.rstrip(), err=True)
    if unexpected and not debug:
        typer.echo("(run `kubeml --debug ...` for the traceback)", err=True)


app = typer.Typer(
    name="kubeml",
    cls=_ReportingGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain `Error: ...` lines, and no rich import for --help
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kubeml {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="control plane URL [env: KUBEML_URL]; none = the local server"),
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="API token [env: KUBEML_API_TOKEN]", show_default=False)
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="print the traceback of errors")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Serverless, data-parallel training of PyTorch networks with K-step model averaging.

    Any command but `server ...` starts a local server when none answers.
    """
    current = state(ctx)
    current.url = url if url is not None else current.url
    current.token = token if token is not None else current.token
    current.debug = debug or current.debug


app.add_typer(function.app, name="function")
app.add_typer(function.app, name="fn", help="Alias of `function`.")  # as in 2021
app.add_typer(dataset.app, name="dataset")
app.command("train")(train.train)
app.command("infer")(infer.infer)
app.add_typer(history.app, name="history")
app.add_typer(task.app, name="task")
app.command("logs")(logs.logs)
app.add_typer(server.app, name="server")


def main() -> None:
    """Console-script entry point (`kubeml`)."""
    app(prog_name="kubeml")


if __name__ == "__main__":
    main()
