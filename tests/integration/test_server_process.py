"""A real control-plane process on 127.0.0.1: start, stop, restart durability, exposure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from kubeml.client import Client, ensure_server, server_status, stop_server
from kubeml.errors import InvalidInputError, ServerUnavailableError
from kubeml.settings import Settings
from tests.conftest import free_port, function_source


def test_ensure_server_starts_one_and_stop_server_stops_it(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    assert server_status(settings) is None
    url = ensure_server(settings)
    assert url == f"http://127.0.0.1:{settings.port}"
    assert f"Started a local kubeml server at {url}" in capfd.readouterr().err

    assert ensure_server(settings) == url  # already running: no second server, no message
    assert "Started" not in capfd.readouterr().err
    status = server_status(settings)
    assert status is not None and status["status"] == "ok" and status["url"] == url
    assert Client(url, token="").health()["pid"] == status["pid"]

    assert stop_server(settings) is True
    assert server_status(settings) is None
    assert not (Path(settings.home) / "server.json").exists()
    assert stop_server(settings) is False
    with pytest.raises(ServerUnavailableError, match="kubeml server start"):
        Client(url, token="").list_functions()


def test_state_survives_a_restart(
    settings: Settings, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    client = Client(ensure_server(settings, quiet=True), token="")
    client.create_function("mlp", function_source())
    paths = []
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.save(tmp_path / f"{field}.npy", digits[field])
        paths.append(tmp_path / f"{field}.npy")
    client.create_dataset("digits", *paths)
    task_id = client.train(function="mlp", dataset="digits", epochs=2, batch_size=32, lr=0.05)
    done = client.wait(task_id, timeout_s=120, poll_s=0.1)
    assert done.state is TaskState.SUCCEEDED, done.error
    samples = digits["test_x"][:50].tolist()
    before = client.infer(task_id, samples)
    history = client.get_history(task_id)

    assert stop_server(settings) is True
    client = Client(ensure_server(settings, quiet=True), token="")

    assert [f.name for f in client.list_functions()] == ["mlp"]
    assert client.get_dataset("digits").train_size == len(digits["train_x"])
    assert client.get_history(task_id) == history
    assert client.get_task(task_id).state is TaskState.SUCCEEDED
    after = client.infer(task_id, samples)
    assert after == before
    assert np.mean(np.asarray(after) == digits["test_y"][:50]) > 0.8


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    from kubeml.control.edge.app import check_exposure

    with pytest.raises(InvalidInputError, match="KUBEML_API_TOKEN"):
        check_exposure(Settings(home=tmp_path, host="0.0.0.0", api_token=None))
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost"):
        check_exposure(Settings(home=tmp_path, host=host, api_token=None))
    check_exposure(Settings(home=tmp_path, host="0.0.0.0", api_token="s3cret"))

    exposed = Settings(home=tmp_path / "home", host="0.0.0.0", port=free_port(),
                       backend="inline", api_token=None, url=None)  # fmt: skip
    try:
        with pytest.raises(ServerUnavailableError, match=r"refusing to listen on '0\.0\.0\.0'"):
            ensure_server(exposed, quiet=True)
    finally:
        stop_server(exposed, timeout_s=10)
    assert "refusing" in (tmp_path / "home" / "server.log").read_text()


def test_importing_the_client_loads_no_heavy_module() -> None:
    heavy = ("torch", "fastapi", "uvicorn", "ray", "starlette", "kubeml.control")
    code = (
        "import sys, kubeml.client, kubeml.client.local_server\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} "
        f"or m.startswith('kubeml.control')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
