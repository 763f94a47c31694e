"""The REST API and the Python client, driven through the real app in-process.

The client talks to `create_app(engine)` through FastAPI's test transport, so every request
crosses the same routing, validation, error mapping and (de)serialisation as over TCP.
"""

from __future__ import annotations

import io
import pickle
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from kubeml.api.schemas import TaskState
from kubeml.client import Client
from kubeml.control.edge.app import create_app
from kubeml.control.tasks.engine import Engine
from kubeml.errors import (
    AlreadyExistsError,
    CapacityError,
    ConflictError,
    InvalidDatasetError,
    InvalidFunctionError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ServerUnavailableError,
    UnauthorizedError,
    error_class,
    status_of,
)
from kubeml.settings import Settings
from tests.conftest import function_source
from tests.integration.conftest import wait_for

FIELDS = ("train_x", "train_y", "test_x", "test_y")
JSON_HEADERS = {"content-type": "application/json"}
FAST = {"function": "mlp", "dataset": "digits", "batch_size": 32, "lr": 0.05}


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def connect(engine: Engine) -> tuple[TestClient, Client]:
    """The app on `engine`, as a raw HTTP test client and as the kubeml client."""
    http = TestClient(create_app(engine, engine.settings))
    return http, Client("http://testserver", token="", transport=http._transport)


def upload(
    http: TestClient,
    digits: dict[str, np.ndarray],
    name: str,
    allow_pickle: bool = False,
    **parts: tuple[str, bytes] | None,
) -> httpx.Response:
    """POST /datasets with the digits arrays, some parts replaced (or dropped with None)."""
    files = {f: (f"{f}.npy", npy(digits[f]), "application/octet-stream") for f in FIELDS}
    for key, part in parts.items():
        if part is None:
            del files[key]
        else:
            files[key] = (part[0], part[1], "application/octet-stream")
    form = {"name": name, "allow_pickle": str(allow_pickle).lower()}
    return http.post("/datasets", data=form, files=files)


# -- a stocked server: one function, one dataset, one trained task ---------------------------
@dataclass
class Stock:
    engine: Engine
    http: TestClient
    client: Client
    task_id: str
    digits: dict[str, np.ndarray]
    snapshot: dict[str, Any] = field(default_factory=dict)

    def take_snapshot(self) -> dict[str, Any]:
        home = Path(self.engine.settings.home)
        return {
            "functions": [f.model_dump() for f in self.client.list_functions()],
            "datasets": [d.model_dump() for d in self.client.list_datasets()],
            "tasks": sorted(t.id for t in self.client.list_tasks()),
            "history": self.client.get_history(self.task_id).model_dump(),
            "dataset_dirs": sorted(p.name for p in (home / "datasets").iterdir()),
            "has_model": self.engine.models.has_final(self.task_id),
        }


@pytest.fixture(scope="module")
def stock(
    tmp_path_factory: pytest.TempPathFactory, digits: dict[str, np.ndarray]
) -> Iterator[Stock]:
    root = tmp_path_factory.mktemp("api")
    settings = Settings(home=root / "home", backend="inline", capacity=2, shm_dir=root / "shm")
    engine = Engine(settings)
    try:
        http, client = connect(engine)
        client.create_function("mlp", function_source())
        client.create_dataset("digits", *(digits[f] for f in FIELDS))
        task_id = client.train(epochs=1, **FAST)
        assert client.wait(task_id, timeout_s=120, poll_s=0.05).state is TaskState.SUCCEEDED
        stock = Stock(engine, http, client, task_id, digits)
        stock.snapshot = stock.take_snapshot()
        assert stock.snapshot["has_model"] and stock.snapshot["dataset_dirs"] == ["digits"]
        yield stock
    finally:
        engine.close()


# -- bad inputs: each a 4xx naming the field or file, and nothing stored is lost -------------
@dataclass(frozen=True)
class Bad:
    send: Callable[[Stock], httpx.Response]
    status: int
    words: tuple[str, ...]  # all must appear in the error message


def _train(**fields: Any) -> Callable[[Stock], httpx.Response]:
    return lambda s: s.http.post("/train", json={**FAST, **fields})


def _upload(name: str = "fresh", allow_pickle: bool = False, **parts: Any) -> Callable[..., Any]:
    return lambda s: upload(s.http, s.digits, name, allow_pickle, **parts)


def _code(source: str, name: str = "fresh") -> Callable[[Stock], httpx.Response]:
    return lambda s: s.http.post("/functions", json={"name": name, "code": source})


def _truncated(s: Stock) -> httpx.Response:
    return upload(s.http, s.digits, "fresh", train_x=("x.npy", npy(s.digits["train_x"])[:-50]))


def _short_labels(s: Stock) -> httpx.Response:
    return upload(s.http, s.digits, "fresh", train_y=("y.npy", npy(s.digits["train_y"][:-7])))


def _empty(s: Stock) -> httpx.Response:
    empty_x, empty_y = s.digits["test_x"][:0], s.digits["test_y"][:0]
    return upload(s.http, s.digits, "fresh", test_x=("tx.npy", npy(empty_x)),
                  test_y=("ty.npy", npy(empty_y)))  # fmt: skip


def _raw_train(field: bytes) -> Callable[[Stock], httpx.Response]:
    body = b'{"function": "mlp", "dataset": "digits", ' + field + b"}"
    return lambda s: s.http.post("/train", content=body, headers=JSON_HEADERS)


def _poked(field: str, value: float, index: int) -> Callable[[Stock], httpx.Response]:
    def send(s: Stock) -> httpx.Response:
        array = s.digits[field].astype(np.float32)
        array[index] = value
        if field == "train_y":  # float labels are regression targets: both splits float
            test_y = ("ty.npy", npy(s.digits["test_y"].astype(np.float32)))
            return upload(s.http, s.digits, "fresh", train_y=("y.npy", npy(array)), test_y=test_y)
        return upload(s.http, s.digits, "fresh", **{field: (f"{field}.npy", npy(array))})

    return send


def _npz_two() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3), b=np.zeros(3))
    return buffer.getvalue()


OBJECTS = np.array([{"a": 1}, None, "x"], dtype=object)
PICKLED = pickle.dumps(np.zeros((3, 8, 8)))

BAD_INPUTS = {
    "pickle refused without allow_pickle": Bad(
        _upload(train_x=("train_x.pkl", PICKLED)), 422, ("train_x", "train_x.pkl", "pickle")
    ),
    "truncated .npy": Bad(_truncated, 422, ("train_x", "x.npy", "truncated")),
    "garbage bytes": Bad(
        _upload(test_y=("labels.npy", b"\x00garbage, not numpy")), 422, ("test_y", "labels.npy")
    ),
    "object dtype": Bad(
        _upload(train_x=("objs.npy", npy(OBJECTS, allow_pickle=True))),
        422,
        ("train_x", "objs.npy", "Python objects"),
    ),
    "unsupported file type": Bad(
        _upload(train_x=("x.csv", b"1,2,3")), 422, ("train_x", "x.csv", "not a .npy or .npz file")
    ),
    "mismatched lengths": Bad(_short_labels, 422, ("train_y", "1490 labels", "1497 samples")),
    "empty test set": Bad(_empty, 422, ("test_x", "empty")),
    "missing file part": Bad(_upload(test_y=None), 422, ("test_y", "missing")),
    "duplicate dataset": Bad(_upload("digits"), 409, ("'digits'", "already exists")),
    "dataset name with slash": Bad(_upload("../etc"), 422, ("dataset name", "'../etc'")),
    "duplicate function": Bad(_code(function_source(), "mlp"), 409, ("'mlp'", "already exists")),
    "function name with slash": Bad(_code(function_source(), "a/b"), 422, ("'a/b'",)),
    "function with syntax error": Bad(
        _code("def main(:\n    pass\n"), 422, ("'fresh'", "syntax error", "line 1")
    ),
    "function without main": Bad(_code("x = 1\n"), 422, ("'fresh'", "main()")),
    "update of unknown function": Bad(
        lambda s: s.http.put("/functions/ghost", json={"code": function_source()}),
        404,
        ("'ghost'",),
    ),
    "unknown function": Bad(_train(function="ghost"), 404, ("function", "'ghost'")),
    "unknown dataset": Bad(_train(dataset="ghost"), 404, ("dataset", "'ghost'")),
    "unknown task": Bad(lambda s: s.http.get("/tasks/deadbeef"), 404, ("'deadbeef'",)),
    "unknown task history": Bad(lambda s: s.http.get("/histories/deadbeef"), 404, ("deadbeef",)),
    "delete of unknown dataset": Bad(lambda s: s.http.delete("/datasets/ghost"), 404, ("'ghost'",)),
    "K=0": Bad(_train(k=0), 422, ("k:", "K must be -1")),
    "K=-2": Bad(_train(k=-2), 422, ("k:", "K must be -1", "-2")),
    "batch 0": Bad(_train(batch_size=0), 422, ("batch_size", "from 1 to 65536", "got 0")),
    "epochs 0": Bad(_train(epochs=0), 422, ("epochs", "from 1 to 10000")),
    "parallelism 0": Bad(_train(parallelism=0), 422, ("parallelism", "from 1 to 1024")),
    "lr 0": Bad(_train(lr=0), 422, ("lr", "finite number in (0, 10]")),
    "lr negative": Bad(_train(lr=-0.1), 422, ("lr", "-0.1")),
    "batch not a number": Bad(_train(batch_size="many"), 422, ("batch_size", "'many'")),
    "unknown train field": Bad(_train(batch=32), 422, ("batch", "unknown field")),
    "parallelism above capacity": Bad(_train(parallelism=3), 409, ("parallelism 3", "capacity")),
    "train body not JSON": Bad(
        lambda s: s.http.post("/train", content=b"{epochs: 1", headers=JSON_HEADERS),
        422,
        ("body", "not valid JSON"),
    ),
    "infer body not a list": Bad(
        lambda s: s.http.post(f"/tasks/{s.task_id}/infer", json={"data": "pixels"}),
        422,
        ("data", "valid array"),  # the route parses its body with pydantic's JSON parser
    ),
    "infer body not JSON": Bad(
        lambda s: s.http.post(
            f"/tasks/{s.task_id}/infer", content=b'{"data": [1', headers=JSON_HEADERS
        ),
        422,
        ("body", "not valid JSON"),
    ),
    "infer without a body": Bad(
        lambda s: s.http.post(f"/tasks/{s.task_id}/infer"), 422, ("body", "not valid JSON")
    ),
    "infer empty list": Bad(
        lambda s: s.http.post(f"/tasks/{s.task_id}/infer", json={"data": []}),
        422,
        ("data", "at least 1"),
    ),
    "infer wrongly shaped input": Bad(
        lambda s: s.http.post(f"/tasks/{s.task_id}/infer", json={"data": [[0] * 10]}),
        422,
        ("infer() rejected the input", "RuntimeError", "[-1, 64]"),
    ),
    "infer unknown task": Bad(
        lambda s: s.http.post("/tasks/deadbeef/infer", json={"data": [[0] * 64]}),
        404,
        ("'deadbeef'",),
    ),
    "negative log offset": Bad(
        lambda s: s.http.get(f"/tasks/{s.task_id}/logs", params={"since": -1}), 422, ("since",)
    ),
    "resume of a succeeded task": Bad(
        lambda s: s.http.post(f"/tasks/{s.task_id}/resume"), 422, ("succeeded", "nothing to resume")
    ),
    "unknown route": Bad(lambda s: s.http.get("/nothing-here"), 404, ("/nothing-here",)),
    # -- issue 8: strict, bounded numbers; data that cannot train ------------------------------
    "lr inf as a string": Bad(_train(lr="inf"), 422, ("lr", "finite number in (0, 10]", "'inf'")),
    "lr overflowing to inf": Bad(_raw_train(b'"lr": 1e400'), 422, ("lr", "finite", "inf")),
    "lr above 10": Bad(_train(lr=11), 422, ("lr", "(0, 10]", "11")),
    "epochs true": Bad(_train(epochs=True), 422, ("epochs", "integer from 1 to 10000", "True")),
    "epochs 2.0": Bad(_train(epochs=2.0), 422, ("epochs", "integer", "2.0")),
    "seed 2**63": Bad(_train(seed=2**63), 422, ("seed", "0 to 9223372036854775807")),
    "seed negative": Bad(_train(seed=-1), 422, ("seed", "0 to")),
    "K a bool": Bad(_train(k=True), 422, ("k:", "K must be -1")),
    "static 1": Bad(_train(static=1), 422, ("static", "boolean")),
    "goal accuracy 101": Bad(_train(goal_accuracy=101), 422, ("goal_accuracy", "(0, 100]")),
    "memory 0 MB": Bad(_train(memory_mb=0), 422, ("memory_mb", "integer from 1 to 1048576")),
    "memory above 1 TiB": Bad(_train(memory_mb=2**20 + 1), 422, ("memory_mb", "1048576")),
    "memory as a string": Bad(_train(memory_mb="1G"), 422, ("memory_mb", "integer", "'1G'")),
    "function name a number": Bad(_train(function=7), 422, ("function", "string")),
    "function name with newline": Bad(_train(function="mlp\n"), 422, ("function", "invalid")),
    "function code nested too deep": Bad(
        _code("x = " + "-" * 500_000 + "1\ndef main():\n    pass\n"), 422, ("'fresh'", "nested")
    ),
    "function code too large": Bad(
        _code("def main():\n    pass\n" + "#" * 2**20), 422, ("code", "at most 1048576")
    ),
    "infer too many samples": Bad(
        lambda s: s.http.post(f"/tasks/{s.task_id}/infer", json={"data": [0] * 65537}),
        422,
        ("data", "at most 65536"),
    ),
    "NaN features": Bad(
        _upload(train_x=("x.npy", npy(np.full((1497, 8, 8), np.nan, np.float32)))),
        422,
        ("train_x", "x.npy", "NaN", "sample 0"),
    ),
    "inf in test features": Bad(_poked("test_x", np.inf, 17), 422, ("test_x", "inf", "sample 17")),
    "NaN regression target": Bad(_poked("train_y", np.nan, 5), 422, ("train_y", "NaN", "sample 5")),
    "2-D labels": Bad(
        _upload(train_y=("y.npy", npy(np.zeros((1497, 10), np.int64)))),
        422,
        ("train_y", "1-D", "(1497, 10)", "argmax"),
    ),
    "negative class id": Bad(
        _upload(test_y=("ty.npy", npy(np.full(300, -1, np.int64)))),
        422,
        ("test_y", "0 or more", "-1"),
    ),
    "0-d array": Bad(_upload(test_y=("ty.npy", npy(np.array(3)))), 422, ("test_y", "0-d")),
    "labels of two kinds": Bad(
        _upload(test_y=("ty.npy", npy(np.zeros(300, np.float32)))),
        422,
        ("test_y", "regression targets", "class ids"),
    ),
    "npz with two arrays": Bad(
        _upload(train_x=("x.npz", _npz_two())), 422, ("train_x", "x.npz", "exactly one array")
    ),
    "body not UTF-8": Bad(
        lambda s: s.http.post("/train", content=b'{"function": "\xff"}', headers=JSON_HEADERS),
        422,
        ("body", "JSON"),
    ),
    "upload not multipart": Bad(
        lambda s: s.http.post("/datasets", json={"name": "x"}), 422, ("multipart/form-data",)
    ),
    "upload with an unknown part": Bad(
        _upload(extra=("e.npy", npy(np.zeros(3)))), 422, ("extra", "unknown file field")
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_refused_and_nothing_is_lost(stock: Stock, case: Bad) -> None:
    response = case.send(stock)

    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    known = error_class(error["code"])  # a code the client maps back, of this status
    assert known is not None and status_of(known) == case.status, error
    for word in case.words:
        assert word in error["message"], (word, error["message"])
    assert stock.take_snapshot() == stock.snapshot


def test_client_raises_the_servers_error_classes(stock: Stock) -> None:
    client = stock.client
    with pytest.raises(NotFoundError, match="function 'ghost' not found"):
        client.get_function("ghost")
    with pytest.raises(AlreadyExistsError, match="'mlp' already exists"):
        client.create_function("mlp", function_source())
    with pytest.raises(InvalidFunctionError, match="syntax error"):
        client.create_function("broken", "def main(:")
    with pytest.raises(InvalidInputError, match="k: K must be -1"):
        client.train(k=0, **FAST)
    with pytest.raises(CapacityError, match="parallelism 3"):
        client.train(parallelism=3, **FAST)
    with pytest.raises(InvalidDatasetError, match="train_y: has 3 labels"):
        digits = stock.digits
        client.create_dataset("fresh", digits["train_x"], digits["train_y"][:3],
                              digits["test_x"], digits["test_y"])  # fmt: skip
    with pytest.raises(InvalidInputError, match="testlabels: no such file"):
        client.create_dataset("fresh", *(digits[f] for f in FIELDS[:3]), "/no/such/file.npy")
    with pytest.raises(InvalidDatasetError, match="traindata: unsupported dtype object"):
        client.create_dataset("fresh", OBJECTS, *(digits[f] for f in FIELDS[1:]))
    with pytest.raises(InvalidInputError, match="invalid dataset name 'a/b'"):
        client.get_dataset("a/b")
    assert stock.take_snapshot() == stock.snapshot


def test_unreachable_server_says_where_and_what_to_do() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", token="")
    with pytest.raises(ServerUnavailableError) as caught:
        client.list_tasks()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "kubeml server start" in str(caught.value)


# -- the happy path, on a fresh engine ---------------------------------------------------------
def test_function_dataset_train_history_infer_flow(
    make_engine: Callable[..., Engine], digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    http, client = connect(make_engine("inline"))
    assert client.health()["status"] == "ok"

    created = client.create_function("mlp", function_source())
    assert [f.name for f in client.list_functions()] == ["mlp"]
    updated = client.update_function("mlp", function_source() + "\n# v2\n")
    assert updated.sha256 != created.sha256 == code_sha(function_source())
    assert client.get_function("mlp").sha256 == updated.sha256

    # Arrays travel as .npy bytes; files as they are on disk (.npy, .npz, trusted .pkl).
    info = client.create_dataset("digits", *(digits[f] for f in FIELDS))
    assert (info.train_size, info.test_size, info.feature_shape) == (1497, 300, [8, 8])
    paths = []
    for f in FIELDS:
        np.savez(tmp_path / f"{f}.npz", digits[f])
        paths.append(tmp_path / f"{f}.npz")
    paths[0] = tmp_path / "train_x.npy"
    np.save(paths[0], digits["train_x"])
    paths[3] = tmp_path / "test_y.pkl"
    paths[3].write_bytes(pickle.dumps(digits["test_y"]))
    from_files = client.create_dataset("digits-files", *map(str, paths), allow_pickle=True)
    assert from_files.train_size == 1497 and from_files.label_dtype == "int64"
    client.delete_dataset("digits-files")
    assert [d.name for d in client.list_datasets()] == ["digits"]

    # REST defaults are the CLI's: omitted K is -1, not 0 (the 2021 crash).
    task_id = client.train(function="mlp", dataset="digits", epochs=3, lr=0.05, batch_size=32)
    task = client.get_task(task_id)
    assert (task.request.k, task.request.parallelism, task.request.validate_every) == (8, 2, 0)
    done = client.wait(task_id, timeout_s=120, poll_s=0.05)
    assert done.state is TaskState.SUCCEEDED, done.error

    history = client.get_history(task_id)
    losses = [epoch.train_loss for epoch in history.epochs]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert history.epochs[-1].accuracy is not None and history.epochs[-1].accuracy > 85
    assert [h.task_id for h in client.list_histories()] == [task_id]

    predictions = client.infer(task_id, digits["test_x"][:100].tolist())
    hits = np.mean(np.asarray(predictions) == digits["test_y"][:100])
    assert hits > 0.85

    lines = client.logs(task_id)
    assert lines and [line.index for line in lines] == list(range(len(lines)))
    assert any(line.source.startswith("function-") for line in lines)
    assert [line.index for line in client.logs(task_id, since=2)] == list(range(2, len(lines)))

    metrics = client.metrics()
    assert f'kubeml_job_rounds_total{{jobid="{task_id}"}}' in metrics
    assert "# TYPE kubeml_job_validation_accuracy gauge" in metrics
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")

    assert client.prune_tasks() == [task_id]
    assert client.list_tasks() == []
    assert client.get_history(task_id).state is TaskState.SUCCEEDED  # pruning keeps histories
    assert client.prune_histories() == [task_id]
    with pytest.raises(NotFoundError):
        client.get_history(task_id)

    client.delete_function("mlp")
    client.delete_dataset("digits")
    assert client.list_functions() == [] and client.list_datasets() == []


def code_sha(source: str) -> str:
    from kubeml.runtime.loader import code_sha256

    return code_sha256(source)


def test_stop_and_resume_a_running_task(
    make_engine: Callable[..., Engine], digits: dict[str, np.ndarray]
) -> None:
    http, client = connect(make_engine("inline"))
    client.create_function("mlp", function_source(SLEEP_PER_BATCH_S=0.02))
    client.create_dataset("digits", *(digits[f] for f in FIELDS))
    task_id = client.train(epochs=100, k=2, **FAST)

    wait_for(lambda: client.get_task(task_id).round >= 1)
    assert client.stop_task(task_id).id == task_id
    stopped = client.wait(task_id, timeout_s=60, poll_s=0.05)
    assert stopped.state is TaskState.STOPPED
    assert client.stop_task(task_id).state is TaskState.STOPPED  # stopping twice is harmless

    resumed = client.resume_task(task_id)
    assert resumed.state in (TaskState.QUEUED, TaskState.RUNNING)
    wait_for(lambda: client.get_task(task_id).state is TaskState.RUNNING)
    with pytest.raises(ConflictError, match=f"{task_id}.*still running"):
        client.delete_history(task_id)
    with pytest.raises(ConflictError, match="'digits' is in use"):
        client.delete_dataset("digits")
    with pytest.raises(ConflictError, match=f"{task_id}.*running; nothing to resume"):
        client.resume_task(task_id)
    for response in (http.delete(f"/histories/{task_id}"), http.delete("/datasets/digits")):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "conflict"
    client.stop_task(task_id)
    assert client.wait(task_id, timeout_s=60, poll_s=0.05).state is TaskState.STOPPED
    assert client.get_dataset("digits").train_size == 1497
    client.delete_history(task_id)
    with pytest.raises(NotFoundError):
        client.get_history(task_id)


# -- the edge: token and upload limits -------------------------------------------------------
def test_token_is_required_on_every_route_but_health(make_engine: Callable[..., Engine]) -> None:
    http, _ = connect(make_engine("inline", api_token="s3cret"))

    assert http.get("/health").status_code == 200
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
        for method, path in (("GET", "/functions"), ("GET", "/openapi.json"),
                             ("POST", "/train"), ("GET", "/metrics")):  # fmt: skip
            response = http.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "unauthorized"
            assert "Bearer" in response.json()["error"]["message"]
    assert http.get("/functions", headers={"authorization": "Bearer s3cret"}).json() == []

    with pytest.raises(UnauthorizedError, match="API token"):
        Client("http://testserver", token="wrong", transport=http._transport).list_functions()
    with pytest.raises(UnauthorizedError):
        Client("http://testserver", token="", transport=http._transport).list_functions()
    authorized = Client("http://testserver", token="s3cret", transport=http._transport)
    assert authorized.list_functions() == []


def test_oversized_uploads_are_refused(
    make_engine: Callable[..., Engine], digits: dict[str, np.ndarray]
) -> None:
    http, client = connect(make_engine("inline", max_upload_mb=1))
    big = np.zeros((2**20 // 8 + 1, 2), dtype=np.float32)  # just over 1 MiB

    declared = upload(http, digits, "big", train_x=("big.npy", npy(big)))
    assert declared.status_code == 413
    assert "limit of 1 MiB" in declared.json()["error"]["message"]

    body = upload_body(digits, big)
    streamed = http.post("/datasets", content=iter([body[: 2**19], body[2**19 :]]),
                         headers={"content-type": BOUNDARY_TYPE})  # fmt: skip
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"]["code"] == "payload_too_large"

    with pytest.raises(PayloadTooLargeError, match="KUBEML_MAX_UPLOAD_MB"):
        client.create_dataset("big", big, np.zeros(len(big)), digits["test_x"], digits["test_y"])
    with pytest.raises(PayloadTooLargeError):
        client.create_function("huge", "def main(): pass\n" + "#" * 2**21)
    assert client.list_datasets() == [] and client.list_functions() == []


BOUNDARY_TYPE = "multipart/form-data; boundary=kubeml-test-boundary"


def upload_body(digits: dict[str, np.ndarray], train_x: np.ndarray) -> bytes:
    """A multipart dataset upload, built by hand so it can be streamed without a length."""
    boundary = b"--kubeml-test-boundary"
    parts = [boundary + b'\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n']
    for f in FIELDS:
        header = f'Content-Disposition: form-data; name="{f}"; filename="{f}.npy"'
        data = npy(train_x if f == "train_x" else digits[f])
        parts.append(boundary + b"\r\n" + header.encode() + b"\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + boundary + b"--\r\n"


def test_openapi_document_lists_the_routes(stock: Stock) -> None:
    paths = stock.http.get("/openapi.json").json()["paths"]
    for path in ("/functions", "/datasets", "/train", "/tasks/{task_id}/stop",
                 "/tasks/{task_id}/logs", "/tasks/{task_id}/infer", "/histories/prune",
                 "/health", "/metrics"):  # fmt: skip
        assert path in paths, path
    assert stock.http.get("/docs").status_code == 200
