"""What every command shares: settings and a client, both built lazily on first use.

`kubeml --help` must not pay for pydantic-settings, httpx or the schemas, so nothing here
is imported until a command asks for it. Tests inject a ready client through `CliState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from typer._click import Context as ClickContext

    from kubeml.client import Client
    from kubeml.settings import Settings


@dataclass
class CliState:
    """The root options of one `kubeml` run, and what they lead to."""

    url: str | None = None
    token: str | None = None
    debug: bool = False
    settings: Settings | None = None
    client: Client | None = None

    def get_settings(self) -> Settings:
        """`Settings()` from the `KUBEML_*` environment, with `--url`/`--token` on top."""
        if self.settings is None:
            from pydantic import ValidationError

            from kubeml.errors import InvalidInputError
            from kubeml.settings import Settings

            try:
                self.settings = Settings()
            except ValidationError as exc:
                problems = "; ".join(
                    f"KUBEML_{str(e['loc'][0]).upper() if e['loc'] else '?'}={e['input']!r}: "
                    f"{e['msg']}"
                    for e in exc.errors()
                )
                raise InvalidInputError(f"invalid setting: {problems}") from exc
        updates: dict[str, str] = {}
        if self.url is not None:
            updates["url"] = self.url
        if self.token is not None:
            updates["api_token"] = self.token
        if updates:
            self.settings = self.settings.model_copy(update=updates)
            self.url = self.token = None
        return self.settings

    def get_client(self) -> Client:
        """A client of the control plane; starts a local server when none answers."""
        if self.client is None:
            from kubeml.client import Client, local_server

            settings = self.get_settings()
            url = local_server.ensure_server(
                settings
            )  # raises if a named KUBEML_URL does not answer
            self.client = Client(url, token=settings.api_token, settings=settings)
        return self.client


def state(ctx: ClickContext) -> CliState:
    """The `CliState` of this run (the root callback puts it in `ctx.obj`)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def client(ctx: typer.Context) -> Client:
    return state(ctx).get_client()
