"""A damaged home still serves, through a real server process; IPv6; the CLI's bad numbers."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from kubeml.client import Client, ensure_server, server_status, stop_server
from kubeml.errors import DamagedRecordError
from kubeml.settings import Settings
from tests.conftest import free_port, function_source

FIELDS = ("train_x", "train_y", "test_x", "test_y")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KUBEML_")}


def test_a_damaged_record_is_skipped_and_reported_and_the_rest_serves(
    settings: Settings, digits: dict[str, np.ndarray]
) -> None:
    client = Client(ensure_server(settings, quiet=True), token="")
    client.create_function("mlp", function_source())
    for name in ("digits", "other"):
        client.create_dataset(name, *(digits[f] for f in FIELDS))
    tasks = [
        client.train(function="mlp", dataset="digits", epochs=1, batch_size=32, lr=0.05)
        for _ in range(2)
    ]
    for task_id in tasks:
        assert client.wait(task_id, timeout_s=120, poll_s=0.1).state is TaskState.SUCCEEDED
    broken, kept = tasks
    assert stop_server(settings) is True

    # What the issue saw: a task stored with `lr: null`; and a dataset meta file cut short.
    home = Path(settings.home)
    with sqlite3.connect(home / "kubeml.db") as db:
        body = db.execute("SELECT body FROM tasks WHERE id=?", (broken,)).fetchone()[0]
        db.execute(
            "UPDATE tasks SET body=? WHERE id=?", (body.replace('"lr":0.05', '"lr":null'), broken)
        )
        db.execute("UPDATE histories SET body=? WHERE task_id=?", ("{not json", broken))
    info = home / "datasets" / "other" / "info.json"
    info.write_text(info.read_text()[:20])

    client = Client(ensure_server(settings, quiet=True), token="")  # the server starts
    assert [t.id for t in client.list_tasks()] == [kept]
    assert [h.task_id for h in client.list_histories()] == [kept]
    assert [d.name for d in client.list_datasets()] == ["digits"]
    assert [f.name for f in client.list_functions()] == ["mlp"]
    assert client.get_task(kept).state is TaskState.SUCCEEDED
    assert len(client.infer(kept, digits["test_x"][:3].tolist())) == 3
    with pytest.raises(DamagedRecordError, match=rf"task '{broken}' is damaged.*lr"):
        client.get_task(broken)
    with urllib.request.urlopen(f"{settings.server_url}/health") as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:  # a state clash, not a server bug
        urllib.request.urlopen(f"{settings.server_url}/tasks/{broken}")
    assert refused.value.code == 409
    assert json.loads(refused.value.read())["error"]["code"] == "damaged_record"

    status = server_status(settings)
    assert status is not None
    damaged = status["damaged_records"]
    assert any(broken in line and "request.lr" in line for line in damaged), damaged
    assert any(f"history '{broken}'" in line for line in damaged), damaged
    assert any("dataset 'other'" in line and "info.json" in line for line in damaged), damaged
    log = (home / "server.log").read_text()
    assert f"skipping the stored task '{broken}'" in log and "skipping damaged dataset" in log

    # The damaged ones can be dropped; the home is then clean again.
    client.delete_history(broken)
    client.delete_dataset("other")
    client.create_dataset("other", *(digits[f] for f in FIELDS))
    assert sorted(client.prune_tasks()) == sorted([kept, broken])  # finished, and damaged
    assert client.health()["damaged_records"] == []
    assert client.list_tasks() == [] and [d.name for d in client.list_datasets()] == [
        "digits",
        "other",
    ]


def test_kubeml_server_start_on_ipv6_loopback(tmp_path: Path) -> None:
    try:
        port = free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    env = {**_clean_env(), "KUBEML_HOME": str(tmp_path / "home"), "KUBEML_BACKEND": "inline",
           "KUBEML_SHM_DIR": str(tmp_path / "shm")}  # fmt: skip
    kubeml = [sys.executable, "-m", "kubeml.cli.app"]
    started = subprocess.run([*kubeml, "server", "start", "--host", "::1", "--port", str(port)],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    settings = Settings(home=tmp_path / "home", host="::1", port=port, url=None, api_token=None)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://[::1]:{port}" in started.stdout
        assert Client(f"http://[::1]:{port}", token="").list_functions() == []
        status = server_status(settings)
        assert status is not None and status["url"] == f"http://[::1]:{port}"
    finally:
        assert stop_server(settings, timeout_s=30) is True


def test_cli_refuses_infinite_lr_and_huge_seeds_naming_the_flag(tmp_path: Path) -> None:
    env = {**_clean_env(), "KUBEML_HOME": str(tmp_path), "KUBEML_URL": "http://127.0.0.1:9"}
    for flag, value, words in (
        ("--lr", "inf", ("'--lr'", "finite number in (0, 10]", "inf")),
        ("--lr", "nan", ("'--lr'", "finite number")),
        ("--seed", str(2**63), ("'--seed'", "0 to 9223372036854775807")),
        ("--epochs", "0", ("'--epochs'", "1 to 10000")),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "kubeml.cli.app", "train", "-f", "f", "-d", "d", flag, value],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, (flag, value, result.stderr)
        for word in words:
            assert word in result.stderr, (word, result.stderr)
        assert "unexpected" not in result.stderr


def test_an_upload_larger_than_the_free_disk_is_refused_before_it_is_read(
    make_engine: Any, digits: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from kubeml.control.edge import uploads
    from kubeml.control.edge.app import create_app

    engine = make_engine("inline")
    http = TestClient(create_app(engine, engine.settings))
    files = {f: (f"{f}.npy", _npy(digits[f]), "application/octet-stream") for f in FIELDS}
    # As if the disk were full: keep free whatever is free when the server asks (read
    # then, as other programs on the machine write and delete files meanwhile).
    monkeypatch.setattr(uploads, "disk_reserve", lambda total: shutil.disk_usage(engine.home).free)
    refused = http.post("/datasets", data={"name": "digits"}, files=files)
    assert refused.status_code == 413, refused.text
    message = refused.json()["error"]["message"]
    spare = rf"the disk of {re.escape(str(engine.home / 'datasets'))} has 0\.\d MiB to spare"
    assert re.search(spare, message), message
    monkeypatch.setattr(uploads, "disk_reserve", lambda total: 0)
    assert http.post("/datasets", data={"name": "digits"}, files=files).status_code == 201
    assert [p.name for p in (engine.home / "datasets").iterdir()] == ["digits"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_upload_streamed_in_tiny_chunks_is_stored_whole(
    make_engine: Any, digits: dict[str, np.ndarray]
) -> None:
    from fastapi.testclient import TestClient

    from kubeml.control.edge.app import create_app

    engine = make_engine("inline")
    http = TestClient(create_app(engine, engine.settings))
    boundary = "h8-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nd\r\n'.encode()]
    for f in FIELDS:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{f}"; filename="{f}.npz"'
        buffer = io.BytesIO()
        np.savez_compressed(buffer, digits[f])
        parts.append(head.encode() + b"\r\n\r\n" + buffer.getvalue() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    chunks = (body[i : i + 997] for i in range(0, len(body), 997))
    kind = {"content-type": f"multipart/form-data; boundary={boundary}"}
    answer = http.post("/datasets", content=chunks, headers=kind)
    assert answer.status_code == 201, answer.text
    x, y = engine.datasets.read("d", "test", [(0, 300)])
    np.testing.assert_array_equal(x, digits["test_x"])
    np.testing.assert_array_equal(y, digits["test_y"])
