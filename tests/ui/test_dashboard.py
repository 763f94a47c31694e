"""/dashboard, /docs and /tasks/{id}/progress on the real app: local assets, the token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kubeml.api.schemas import TaskProgress, TaskState
from kubeml.control.edge.app import create_app
from kubeml.control.edge.dashboard import STATIC_DIR

TOKEN = "dash-s3cret"
ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']|url: *["']([^"']+)["']""")


@pytest.fixture
def http(digits_engine: Any) -> Iterator[TestClient]:
    settings = digits_engine.settings.model_copy(update={"api_token": TOKEN})
    with TestClient(create_app(digits_engine, settings)) as client:
        yield client


def _assets(html: str) -> list[str]:
    return [a or b for a, b in ASSET.findall(html)]


@pytest.mark.parametrize("page", ["/dashboard", "/docs"])
def test_pages_load_only_local_assets_and_need_no_token(http: TestClient, page: str) -> None:
    response = http.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", response.text), "a page must not reach the internet"
    assets = [a for a in _assets(response.text) if not a.startswith("#")]
    assert assets
    for asset in assets:
        url = asset if asset.startswith("/") else "/" + asset
        loaded = http.get(url)
        assert loaded.status_code == 200, url
        assert len(loaded.content) > 0


def test_docs_still_describe_the_api(http: TestClient) -> None:
    assert http.get("/redoc").status_code in (401, 404)  # no CDN page left behind
    assert http.get("/openapi.json").status_code == 401
    schema = http.get("/openapi.json", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert "/tasks/{task_id}/progress" in schema["paths"]
    assert "/dashboard" not in schema["paths"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearer": []}]  # /docs can send the token


def test_vendored_libraries_ship_with_their_licenses() -> None:
    for library in ("swagger-ui", "uplot"):
        folder = STATIC_DIR / "vendor" / library
        assert (folder / "LICENSE").stat().st_size > 500
        assert "(npm)" in (folder / "VERSION").read_text()


def test_data_routes_keep_the_token(http: TestClient, digits_engine: Any) -> None:
    task_id = digits_engine.train(function="mlp", dataset="digits", epochs=1)
    digits_engine.wait(task_id, timeout_s=60)
    for path in ("/tasks", f"/tasks/{task_id}/progress", f"/tasks/{task_id}/logs", "/metrics"):
        assert http.get(path).status_code == 401, path
    assert http.post(f"/tasks/{task_id}/stop").status_code == 401
    assert http.get("/static/../engine.py").status_code in (401, 404)
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert http.get(f"/tasks/{task_id}/progress", headers=auth).status_code == 200


def test_progress_has_round_points_epochs_and_the_round_count(
    http: TestClient, digits_engine: Any
) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    task_id = digits_engine.train(function="mlp", dataset="digits", epochs=2, k=2,
                                  validate_every=1)  # fmt: skip
    seen_r = set()
    while True:
        progress = TaskProgress.model_validate(
            http.get(f"/tasks/{task_id}/progress", headers=auth).json()
        )
        if progress.task.state.finished:
            break
        if progress.rounds_per_epoch is not None:
            seen_r.add(progress.rounds_per_epoch)
    assert progress.task.state is TaskState.SUCCEEDED
    rounds = {e.rounds for e in progress.epochs}
    assert seen_r and seen_r <= rounds  # the R shown while running is the R that ran
    assert len(progress.rounds) == sum(e.rounds for e in progress.epochs)
    assert progress.rounds_per_epoch is None  # nothing in progress any more
    tail = http.get(f"/tasks/{task_id}/progress", params={"since": 3}, headers=auth).json()
    assert [p["index"] for p in tail["rounds"]] == list(range(3, len(progress.rounds)))

    missing = http.get("/tasks/deadbeef/progress", headers=auth)
    assert missing.status_code == 404 and "deadbeef" in missing.json()["error"]["message"]
    bad = http.get(f"/tasks/{task_id}/progress", params={"since": -1}, headers=auth)
    assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]
