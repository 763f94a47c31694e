"""The browser side of the control plane: /dashboard, local /docs, and task progress.

Every asset ships in `kubeml/control/edge/static` (package data): the page works with no
internet. The page and its assets are static and open; the data it shows comes from the
REST routes, behind the API token like any client.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from kubeml.api.schemas import TaskProgress, TaskState
from kubeml.control.tasks.engine import Engine

STATIC_PREFIX = "/static"
STATIC_DIR = Path(str(files("kubeml.control.edge") / "static"))

router = APIRouter()


@router.get("/tasks/{task_id}/progress", tags=["tasks"])
def task_progress(
    task_id: str, request: Request, since: Annotated[int, Query(ge=0)] = 0
) -> TaskProgress:
    """The task, its round points from index `since` on (kept in memory while the control
    plane runs) and its epochs (from the history): what `task watch` and /dashboard draw."""
    engine: Engine = request.app.state.engine
    info = engine.get_task(task_id)
    history = engine.get_history(task_id)
    rounds_per_epoch = samples = None
    current = len(history.epochs) + 1  # the epoch in progress (or about to start)
    if info.state is TaskState.RUNNING and current <= info.request.epochs:
        plan = engine.progress.plan(task_id, info.request, current, info.parallelism)
        rounds_per_epoch, samples = len(plan), sum(plan)
    return TaskProgress(
        task=info,
        rounds_per_epoch=rounds_per_epoch,
        samples_per_epoch=samples,
        rounds=engine.progress.rounds(task_id, since),
        epochs=history.epochs,
    )


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")


@router.get("/docs", include_in_schema=False)
def docs() -> FileResponse:
    """Swagger UI from the vendored swagger-ui-dist files instead of a CDN; its page sends
    the token (from its field) when it loads /openapi.json and when it tries a route."""
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")


def mount(app: FastAPI, *, token_required: bool = False) -> None:
    """Add the dashboard, the local /docs and the progress route to `app`.

    The app must be built with `docs_url=None, redoc_url=None` (FastAPI's own pages load
    their scripts from a CDN). With `token_required`, the schema declares the bearer token,
    so /docs has an Authorize button and "Try it out" sends the token.
    """
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
    if token_required:
        _declare_bearer(app)


def _declare_bearer(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # built once and cached by FastAPI; amended in place
        if "security" not in schema:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer",
                                 "description": "the server's KUBEML_API_TOKEN"}  # fmt: skip
            schema["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
