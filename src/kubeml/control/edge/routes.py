"""The REST routes: one thin handler per `Engine` operation.

Handlers are plain `def`s, so FastAPI runs them in its threadpool and a slow engine call
never blocks the event loop. Three are `async def`: the dataset upload streams its body to
disk and does its work in the threadpool (`kubeml.control.edge.uploads`), and inference awaits
its warm worker on the event loop itself, with no thread hand-off (`Engine.infer_async`).
Reading a task answers a live one from memory on the event loop (watchers poll it).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

import kubeml
from kubeml.api.datasets import DatasetInfo, DatasetSource
from kubeml.api.schemas import (
    MAX_CODE_CHARS,
    FunctionInfo,
    FunctionName,
    History,
    InferRequest,
    LogLine,
    TaskInfo,
    TrainRequest,
)
from kubeml.control.edge import uploads
from kubeml.control.edge.guard import json_body, parse_json_body
from kubeml.control.tasks.engine import Engine


async def _engine(request: Request) -> Engine:
    # async: FastAPI runs a plain-def dependency on its threadpool, a hand-off per request
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(_engine)]


Code = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_CODE_CHARS,
        description=f"the Python source of the function file, at most {MAX_CODE_CHARS} chars",
    ),
]


class FunctionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FunctionName
    code: Code


class FunctionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Code


class TrainBody(TrainRequest):
    """A `TrainRequest` that rejects unknown fields, so a typo is not silently a default."""

    model_config = ConfigDict(extra="forbid", title="TrainRequest")


class InferResponse(BaseModel):
    predictions: Any


class Pruned(BaseModel):
    pruned: list[str]


class Health(BaseModel):
    status: str
    version: str
    pid: int
    backend: str
    capacity: int
    running_tasks: int
    max_upload_bytes: int
    memory_limit: str = Field(
        default="not enforced",
        description="what bounds a function's memory: a cgroup per function, or why nothing",
    )
    damaged_records: list[str] = Field(
        default_factory=list, description="stored records that do not parse and are skipped"
    )


router = APIRouter()


# -- functions ------------------------------------------------------------------------------
@router.post("/functions", status_code=201, tags=["functions"])
def create_function(body: FunctionCreate, engine: EngineDep) -> FunctionInfo:
    return engine.create_function(body.name, body.code)


@router.get("/functions", tags=["functions"])
def list_functions(engine: EngineDep) -> list[FunctionInfo]:
    return engine.list_functions()


# `:path` lets a name with a slash reach the handler, which then names it in the error.
@router.get("/functions/{name:path}", tags=["functions"])
def get_function(name: str, engine: EngineDep) -> FunctionInfo:
    return engine.get_function(name)


@router.put("/functions/{name:path}", tags=["functions"])
def update_function(name: str, body: FunctionUpdate, engine: EngineDep) -> FunctionInfo:
    return engine.update_function(name, body.code)


@router.delete("/functions/{name:path}", status_code=204, tags=["functions"])
def delete_function(name: str, engine: EngineDep) -> Response:
    engine.delete_function(name)
    return Response(status_code=204)


# -- datasets -------------------------------------------------------------------------------
@router.post("/datasets", status_code=201, tags=["datasets"], openapi_extra=uploads.OPENAPI)
async def create_dataset(request: Request, engine: EngineDep) -> DatasetInfo:
    """Upload a dataset as four array files (multipart form), streamed to the store."""
    return await uploads.receive_dataset(request, engine.datasets)


@router.post("/datasets/register", status_code=201, tags=["datasets"])
def register_dataset(body: DatasetSource, engine: EngineDep) -> DatasetInfo:
    """Register a dataset read where it is (a shared directory or an fsspec URL): its
    headers are checked now, its samples as functions read them; nothing is uploaded."""
    return engine.register_dataset(body.name, body.url)


@router.get("/datasets", tags=["datasets"])
def list_datasets(engine: EngineDep) -> list[DatasetInfo]:
    return engine.list_datasets()


@router.get("/datasets/{name:path}", tags=["datasets"])
def get_dataset(name: str, engine: EngineDep) -> DatasetInfo:
    return engine.get_dataset(name)


@router.delete("/datasets/{name:path}", status_code=204, tags=["datasets"])
def delete_dataset(name: str, engine: EngineDep) -> Response:
    engine.delete_dataset(name)
    return Response(status_code=204)


# -- train tasks ----------------------------------------------------------------------------
@router.post("/train", status_code=201, tags=["tasks"])
def train(body: TrainBody, engine: EngineDep) -> TaskInfo:
    """Queue a train task; omitted fields take the CLI's defaults."""
    request = TrainRequest.model_validate(body.model_dump())
    return engine.get_task(engine.train(request))


@router.get("/tasks", tags=["tasks"])
def list_tasks(engine: EngineDep) -> list[TaskInfo]:
    return engine.list_tasks()


@router.post("/tasks/prune", tags=["tasks"])
def prune_tasks(engine: EngineDep) -> Pruned:
    """Forget finished tasks (their histories and trained models stay)."""
    return Pruned(pruned=engine.prune_tasks())


@router.get("/tasks/{task_id}", tags=["tasks"])
async def get_task(task_id: str, engine: EngineDep) -> TaskInfo:
    # Watchers poll a live task often: its state is in memory, answered on the event loop
    # with no thread hand-off; a finished task's is read from the records, in the threadpool.
    live = engine.live_task(task_id)
    return live if live is not None else await run_in_threadpool(engine.get_task, task_id)


@router.post("/tasks/{task_id}/stop", tags=["tasks"])
def stop_task(task_id: str, engine: EngineDep) -> TaskInfo:
    """Stop a queued task at once, a running one at its next round boundary."""
    return engine.stop_task(task_id)


@router.post("/tasks/{task_id}/resume", tags=["tasks"])
def resume_task(task_id: str, engine: EngineDep) -> TaskInfo:
    """Continue a failed or stopped task from its last completed epoch."""
    engine.resume_task(task_id)
    return engine.get_task(task_id)


@router.get("/tasks/{task_id}/logs", tags=["tasks"])
def task_logs(
    task_id: str, engine: EngineDep, since: Annotated[int, Query(ge=0)] = 0
) -> list[LogLine]:
    """Log lines of a task from index `since` on (poll with the next index to follow)."""
    return engine.logs_of(task_id, since)


@router.post("/tasks/{task_id}/infer", tags=["tasks"], openapi_extra=json_body(InferRequest))
async def infer(task_id: str, request: Request, engine: EngineDep) -> InferResponse:
    """Predictions of the task's trained model for `data`, a list of samples."""
    # Serving's hot path stays on the event loop: pydantic's own JSON parser reads the body
    # (2.5x `json.loads` and validation, which FastAPI would do), and the warm worker's
    # answer is awaited here (`Engine.infer_async`).
    body = parse_json_body(InferRequest, await request.body())
    return InferResponse(predictions=await engine.infer_async(task_id, body.data))


# -- histories ------------------------------------------------------------------------------
@router.get("/histories", tags=["histories"])
def list_histories(engine: EngineDep) -> list[History]:
    return engine.list_histories()


@router.post("/histories/prune", tags=["histories"])
def prune_histories(engine: EngineDep) -> Pruned:
    """Delete the histories, models and logs of every finished task."""
    return Pruned(pruned=engine.prune_histories())


@router.get("/histories/{task_id}", tags=["histories"])
def get_history(task_id: str, engine: EngineDep) -> History:
    return engine.get_history(task_id)


@router.delete("/histories/{task_id}", status_code=204, tags=["histories"])
def delete_history(task_id: str, engine: EngineDep) -> Response:
    engine.delete_history(task_id)
    return Response(status_code=204)


# -- operations -----------------------------------------------------------------------------
@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
def metrics(engine: EngineDep) -> PlainTextResponse:
    """Prometheus text exposition of the per-task `kubeml_job_*` series."""
    return PlainTextResponse(
        engine.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


@router.get("/health", tags=["operations"])
def health(request: Request, engine: EngineDep) -> Health:
    """Liveness; the only route that needs no token."""
    described = engine.backend.describe()
    return Health(
        status="ok",
        version=kubeml.__version__,
        pid=os.getpid(),
        backend=str(described.get("backend", engine.backend.name)),
        capacity=engine.backend.capacity,
        running_tasks=len(engine.scheduler.running()),
        max_upload_bytes=request.app.state.max_upload_bytes,
        memory_limit=str(described.get("memory_limit", "not enforced")),
        damaged_records=[*engine.metadata.damaged(), *engine.datasets.damaged()],
    )
