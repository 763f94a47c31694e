"""A `kubeml` CLI wired to the real app in-process: typer's runner, FastAPI's test transport,
the real client, and an inline engine on a temporary home stocked with digits and an MLP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from kubeml.cli._context import CliState
from kubeml.cli.app import app
from kubeml.client import Client
from kubeml.control.edge.app import create_app
from kubeml.control.tasks.engine import Engine
from tests.conftest import function_source


class Cli:
    """Runs `kubeml ...` in-process against one engine, as a user would type it."""

    def __init__(self, engine: Engine, client: Client) -> None:
        self.engine, self.client = engine, client
        self.runner = CliRunner()

    def run(self, *args: str, input: str | None = None) -> Result:
        state = CliState(settings=self.engine.settings, client=self.client)
        return self.runner.invoke(app, list(args), obj=state, prog_name="kubeml", input=input)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, f"kubeml {' '.join(args)}:\n{result.output}"
        return result

    def fails(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code != 0, f"kubeml {' '.join(args)} succeeded:\n{result.output}"
        assert "Error:" in result.stderr, result.output
        return result


def quiet_source(**constants: Any) -> str:
    """tests/functions/digits_mlp.py without its print().

    The inline backend runs user code in this process, where the runner has swapped
    sys.stdout: a print from a function thread would land in a command's output.
    """
    source = function_source(**constants)
    assert "print(" in source
    return source.replace("print(", "self.logger.info(")


@pytest.fixture
def cli(make_engine: Callable[..., Engine], digits: dict[str, np.ndarray]) -> Iterator[Cli]:
    engine = make_engine("inline")
    engine.create_function("mlp", quiet_source())
    engine.create_dataset("digits", digits["train_x"], digits["train_y"],
                          digits["test_x"], digits["test_y"])  # fmt: skip
    with TestClient(create_app(engine, engine.settings)) as http:
        client = Client("http://testserver", token="", transport=http._transport)
        yield Cli(engine, client)
        client.close()
