"""`kubeml server ...` (the local-server helpers faked) and the CLI's start-up cost."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from kubeml.cli._context import CliState
from kubeml.cli.app import app
from kubeml.settings import Settings


class FakeLocal:
    """Stands in for `kubeml.client.local_server`: records calls, keeps a pretend server."""

    def __init__(self) -> None:
        self.running: dict[str, Any] | None = None
        self.started_with: list[Settings] = []

    def ensure_server(self, settings: Settings, *, quiet: bool = False) -> str:
        self.started_with.append(settings)
        self.running = {"pid": 4242, "backend": settings.backend.value}
        return settings.server_url

    def stop_server(self, settings: Settings) -> bool:
        was, self.running = self.running is not None, None
        return was

    def server_status(self, settings: Settings) -> dict[str, Any] | None:
        return self.running


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> FakeLocal:
    import kubeml.client.local_server as module

    fake = FakeLocal()
    for name in ("ensure_server", "stop_server", "server_status"):
        monkeypatch.setattr(module, name, getattr(fake, name))
    return fake


def _run(tmp_path: Any, *args: str) -> Any:
    state = CliState(settings=Settings(home=tmp_path, port=10999))
    return CliRunner().invoke(app, list(args), obj=state)


def test_server_start_status_stop(local: FakeLocal, tmp_path: Any) -> None:
    status = _run(tmp_path, "server", "status")
    assert (
        status.exit_code == 1
        and "no kubeml server answers at http://127.0.0.1:10999" in status.stdout
    )

    started = _run(tmp_path, "server", "start", "--port", "10998", "--backend", "inline")
    assert started.exit_code == 0 and "started at http://127.0.0.1:10998" in started.stdout
    assert local.started_with[-1].backend.value == "inline" and local.started_with[-1].port == 10998
    assert "already running" in _run(tmp_path, "server", "start").stdout

    status = _run(tmp_path, "server", "status", "--json")
    assert status.exit_code == 0 and '"pid": 4242' in status.stdout

    assert "stopped" in _run(tmp_path, "server", "stop").stdout
    assert "no kubeml server was running" in _run(tmp_path, "server", "stop").stdout


def test_server_start_rejects_an_unknown_backend(local: FakeLocal, tmp_path: Any) -> None:
    result = _run(tmp_path, "server", "start", "--backend", "kubernetes")
    assert result.exit_code == 2 and "'--backend'" in result.stderr
    assert local.started_with == []


def _run_cli_in_subprocess(*args: str) -> tuple[set[str], str]:
    """The modules a fresh `kubeml ARGS` loaded, and its stderr."""
    code = (
        "import sys\n"
        f"sys.argv = ['kubeml', *{list(args)!r}]\n"
        "from kubeml.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sys.modules))\n"
    )
    # A URL where nothing listens: `task list` goes through its whole import path, then fails.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEML_")}
    env["KUBEML_URL"] = "http://127.0.0.1:9"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES"))
    return set(line.split()[1:]), out.stderr


@pytest.mark.parametrize("args", [("--help",), ("task", "list")])
def test_the_cli_starts_without_heavy_imports(args: tuple[str, ...]) -> None:
    modules, _ = _run_cli_in_subprocess(*args)
    loaded = {name.split(".")[0] for name in modules}
    assert not {"torch", "numpy", "fastapi", "uvicorn", "matplotlib", "ray"} & loaded


def test_an_unreachable_server_named_by_url_is_a_clear_error() -> None:
    _, stderr = _run_cli_in_subprocess("task", "list")
    assert stderr.startswith("Error: no kubeml server answers at http://127.0.0.1:9")
    assert "Traceback" not in stderr


def test_root_url_and_token_override_the_settings(local: FakeLocal, tmp_path: Any) -> None:
    state = CliState(settings=Settings(home=tmp_path))
    result = CliRunner().invoke(
        app, ["--url", "http://127.0.0.1:10555", "--token", "s3cret", "server", "status"], obj=state
    )
    assert (
        result.exit_code == 1
        and "no kubeml server answers at http://127.0.0.1:10555" in result.stdout
    )
    assert state.settings is not None and state.settings.api_token == "s3cret"


def test_an_invalid_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEML_PORT", "many")
    result = CliRunner().invoke(app, ["task", "list"], obj=CliState())
    assert result.exit_code == 1
    assert "Error: invalid setting: KUBEML_PORT='many'" in result.stderr
