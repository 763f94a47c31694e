"""`kubeml server start|stop|status`: the local control plane (FastAPI on uvicorn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from kubeml.cli._context import state
from kubeml.cli._output import print_json

if TYPE_CHECKING:
    from kubeml.settings import Settings

app = typer.Typer(help="Start, stop and query the local kubeml server.", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.command()
def start(
    ctx: typer.Context,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="run in this terminal until Ctrl-C")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(
            help="address to bind [env: KUBEML_HOST, default 127.0.0.1]; "
            "anything but loopback needs KUBEML_API_TOKEN"
        ),
    ] = None,
    port: Annotated[int | None, typer.Option(help="port [env: KUBEML_PORT, default 10100]")] = None,
    backend: Annotated[
        Literal["process", "inline", "ray"] | None,
        typer.Option(help="where functions run [env: KUBEML_BACKEND, default process]"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster address for --backend ray")
    ] = None,
) -> None:
    """Start the server: in the background (default) or in the foreground."""
    settings = _settings(ctx, host=host, port=port, backend=backend, ray_address=ray_address)
    if foreground:
        import logging

        from kubeml.control.edge.app import run_server

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        run_server(settings)
        return
    from kubeml.client import local_server

    status = local_server.server_status(settings)
    if status is not None:
        typer.echo(f"kubeml server already running at {settings.server_url}")
        return
    url = local_server.ensure_server(settings, quiet=True)
    typer.echo(f"kubeml server started at {url} (home {settings.home})")


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the background server."""
    from kubeml.client import local_server

    settings = _settings(ctx)
    if local_server.stop_server(settings):
        typer.echo(f"kubeml server at {settings.server_url} stopped")
    else:
        typer.echo(f"no kubeml server was running at {settings.server_url}")


@app.command()
def status(ctx: typer.Context, json: Json = False) -> None:
    """Say whether a server answers, and what it runs; exits 1 when none does."""
    from kubeml.client import local_server

    settings = _settings(ctx)
    info = local_server.server_status(settings)
    if json:
        print_json(info)
    elif info is None:
        typer.echo(f"no kubeml server answers at {settings.server_url}")
    else:
        typer.echo(f"kubeml server running at {settings.server_url}")
        for key, value in info.items():
            if isinstance(value, list):  # damaged_records: one per line, or "none"
                value = "".join(f"\n    {item}" for item in value) or "none"
            typer.echo(f"  {key}: {value}")
    if info is None:
        raise typer.Exit(1)


def _settings(ctx: typer.Context, **overrides: Any) -> Settings:
    settings = state(ctx).get_settings()
    updates = {key: value for key, value in overrides.items() if value is not None}
    if "backend" in updates:
        from kubeml.settings import BackendKind

        updates["backend"] = BackendKind(updates["backend"])
    return settings.model_copy(update=updates) if updates else settings
